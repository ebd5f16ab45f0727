# Run-level tables (every cell with an image column; one summary row per image) and the provenance record.


rule aggregate:
    input:
        measurements=per_sample(f"{RESULTS}/measurements/{{sample}}.csv"),
        masks=per_sample(f"{RESULTS}/masks/{{sample}}.tif"),
        benchmarks=per_sample(f"{RESULTS}/benchmarks/infer/{{sample}}.tsv")
        + per_sample(f"{RESULTS}/benchmarks/reconstruct/{{sample}}.tsv"),
    output:
        measurements=f"{RESULTS}/measurements.csv",
        summary=report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        f"{RESULTS}/logs/aggregate/aggregate.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(1000, 5),
        runtime=10,
    params:
        limit=limit_args(),
    shell:
        "cpsnake aggregate --measurements {input.measurements:q} --masks {input.masks:q}"
        " --benchmarks {input.benchmarks:q} --out-measurements {output.measurements:q}"
        " --out-summary {output.summary:q} {params.limit} > {log:q} 2>&1"


rule provenance:
    input:
        images=[SAMPLES[s] for s in sorted(SAMPLES)],
        model=MODEL_FILE,
        normalization=per_sample(f"{RESULTS}/normalized/{{sample}}.json"),
    output:
        f"{RESULTS}/provenance.json",
    log:
        f"{RESULTS}/logs/provenance/provenance.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        model_name=MODEL_NAME,
        config=json.dumps(config, sort_keys=True),
        snakemake=SNAKEMAKE_VERSION,
    shell:
        "cpsnake provenance {output:q} --model {input.model:q} --model-name {params.model_name:q}"
        " --config-json {params.config:q} --snakemake-version {params.snakemake}"
        " --images {input.images:q} --normalization {input.normalization:q} > {log:q} 2>&1"
