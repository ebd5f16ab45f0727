# Image -> float32 network input (channels chosen, percentile-normalized) + the values used (JSON).


rule normalize:
    input:
        image_of,
    output:
        image=intermediate(f"{RESULTS}/normalized/{{sample}}.tif", "normalized"),
        values=f"{RESULTS}/normalized/{{sample}}.json",
    log:
        f"{RESULTS}/logs/normalize/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/normalize/{{sample}}.tsv"
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(500, 30),
        runtime=10,
    params:
        limit=limit_args(),
        args=normalize_args(),
    shell:
        "cpsnake normalize {input:q} {output.image:q} {params.args} {params.limit}"
        " > {log:q} 2>&1"
