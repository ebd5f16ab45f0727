# The run's images -> RESULTS/samples.tsv: each image's header (shape, channels, planes), unreadable
# files failed with their reason (and RESULTS/logs/images/NAME.log), the rest grouped into batches.


checkpoint samples:
    input:
        sheet=config["samples"] or [],
    output:
        SAMPLES_TABLE,
    log:
        f"{RESULTS}/logs/samples.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        cpsnake=CPSNAKE,
        source=step_args(workflow_args.samples_source),
        listing=listing(),
        batch=step_args(workflow_args.batch_options),
        limit=step_args(workflow_args.limit_args),
        blocks=step_args(workflow_args.block_size_args),
        logs=shlex.quote(LAYOUT.image_logs),
    shell:
        "{params.cpsnake} samples {params.source} --out {output:q} {params.batch} {params.limit} {params.blocks}"
        " --logs {params.logs} > {log:q} 2>&1"
