# A batch of flows -> label images RESULTS/masks/NAME.tif (flow following, flow-error QC, hole filling,
# min/max size), ImageJ uint16 TIFFs.


rule reconstruct:
    input:
        flows=f"{RESULTS}/work/{{batch}}/flows",
        # the batch's images: ties the job to the samples checkpoint (its params and resources read it)
        sources=batch_images,
        upstream=work("infer"),
    output:
        manifest=work("reconstruct"),
    log:
        f"{RESULTS}/logs/reconstruct/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reconstruct/{{batch}}.tsv"
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000, 70),
        runtime=60,
    params:
        samples=batch_signature,
        limit=limit_args(),
        args=reconstruct_args(),
    shell:
        batch_args("reconstruct") + " {params.args} {params.limit} > {log:q} 2>&1"
