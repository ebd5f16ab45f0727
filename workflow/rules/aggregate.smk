# The run's tables from every batch's manifests (every cell with an image column; one summary row per
# segmented image; one row per failed image), the provenance record, and the last job: it fails the
# run (exit code) when an image failed, after every table has been written for the others.


rule aggregate:
    input:
        reconstruct=per_batch(work("reconstruct")),
        measure=per_batch(work("measure")),
        rois=per_batch(work("rois")),
        overlay=per_batch(work("overlay")),
    output:
        measurements=LAYOUT.measurements_table,
        summary=report(
            LAYOUT.summary,
            caption="../report/summary.rst",
            category="Summary",
        ),
        failed=LAYOUT.failed,
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cpsnake=CPSNAKE,
        samples=SAMPLES_TABLE,
        results=results_of,
        limit=step_args(workflow_args.limit_args),
    shell:
        "{params.cpsnake} aggregate --samples {params.samples:q} --results {params.results:q}"
        " --out-measurements {output.measurements:q} --out-summary {output.summary:q}"
        " --out-failed {output.failed:q} {params.limit} > {log:q} 2>&1"


rule provenance:
    input:
        normalize=per_batch(work("normalize")),
        failures=LAYOUT.failed,
        model=MODEL_FILE,
    output:
        LAYOUT.provenance,
    log:
        f"{RESULTS}/logs/provenance.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        cpsnake=CPSNAKE,
        samples=SAMPLES_TABLE,
        results=results_of,
        model_name=MODEL_NAME,
        config=json.dumps(config, sort_keys=True),
        snakemake=SNAKEMAKE_VERSION,
    shell:
        "{params.cpsnake} provenance {output:q} --samples {params.samples:q} --results {params.results:q}"
        " --model {input.model:q} --model-name {params.model_name:q} --config-json {params.config:q}"
        " --snakemake-version {params.snakemake} > {log:q} 2>&1"


rule check:
    input:
        failed=LAYOUT.failed,
        provenance=LAYOUT.provenance,
    output:
        LAYOUT.check_done,
    log:
        f"{RESULTS}/logs/check.log",
    localrule: True
    conda:
        "../../envs/cpsnake.yaml"
    params:
        cpsnake=CPSNAKE,
    shell:
        "{params.cpsnake} aggregate --check {input.failed:q} --done {output:q} > {log:q} 2>&1"
