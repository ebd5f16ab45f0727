# QC pictures RESULTS/overlays/NAME.png: the image (auto-contrast) with each cell's outline in colour;
# linked into RESULTS/work/BATCH/overlays/ for the report.


rule overlay:
    input:
        upstream=work("reconstruct"),
        images=batch_images,
    output:
        manifest=work("overlay"),
        report=report(
            directory(LAYOUT.report_overlays),
            patterns=["{name}.png"],
            caption="../report/overlay.rst",
            category="Overlays",
            labels={"image": "{name}"},
        ),
    log:
        f"{RESULTS}/logs/overlay/{{batch}}.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("overlay"),
        runtime=30,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
    shell:
        batch_args("overlay") + " {params.limit} > {log:q} 2>&1"
