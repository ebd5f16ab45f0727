# Flows -> label image (flow following, flow-error QC, hole filling, min/max size), ImageJ uint16 TIFF.


rule reconstruct:
    input:
        f"{RESULTS}/flows/{{sample}}.tif",
    output:
        f"{RESULTS}/masks/{{sample}}.tif",
    log:
        f"{RESULTS}/logs/reconstruct/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reconstruct/{{sample}}.tsv"
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000, 10),
        runtime=30,
    params:
        limit=limit_args(),
        args=reconstruct_args(),
    shell:
        "cpsnake reconstruct {input:q} {output:q} {params.args} {params.limit}"
        " > {log:q} 2>&1"
