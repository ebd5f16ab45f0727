# Label image + original image -> one row per cell (ImageJ's measurement definitions).


rule measure:
    input:
        labels=f"{RESULTS}/masks/{{sample}}.tif",
        image=image_of,
    output:
        f"{RESULTS}/measurements/{{sample}}.csv",
    log:
        f"{RESULTS}/logs/measure/{{sample}}.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(500, 10),
        runtime=10,
    params:
        limit=limit_args(),
    shell:
        "cpsnake measure {input.labels:q} {input.image:q} {output:q} {params.limit}"
        " > {log:q} 2>&1"
