# A batch of images -> float32 network inputs (channels chosen, percentile-normalized), one process.


rule normalize:
    input:
        images=batch_images,
    output:
        images=intermediate(directory(LAYOUT.normalized), "normalized"),
        manifest=work("normalize"),
    log:
        f"{RESULTS}/logs/normalize/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/normalize/{{batch}}.tsv"
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("normalize"),
        runtime=30,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
        args=step_args(workflow_args.normalize_args),
    shell:
        batch_args("normalize") + " {params.args} {params.limit} > {log:q} 2>&1"
