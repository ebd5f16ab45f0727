# QC picture: the image (auto-contrast) with each cell's outline in colour; shown in the report.


rule overlay:
    input:
        image=image_of,
        labels=f"{RESULTS}/masks/{{sample}}.tif",
    output:
        report(
            f"{RESULTS}/overlays/{{sample}}.png",
            caption="../report/overlay.rst",
            category="Overlays",
            labels={"image": "{sample}"},
        ),
    log:
        f"{RESULTS}/logs/overlay/{{sample}}.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(500, 10),
        runtime=10,
    params:
        limit=limit_args(),
    shell:
        "cpsnake overlay {input.image:q} {input.labels:q} {output:q} {params.limit}"
        " > {log:q} 2>&1"
