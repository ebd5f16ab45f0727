# A batch of label images + their images (+ flows, for the quality columns) -> one table per image,
# RESULTS/measurements/NAME.csv (ImageJ's measurement definitions, flow_error and cellprob per cell),
# and with config geojson: true RESULTS/geojson/NAME.geojson (QuPath).


rule measure:
    input:
        upstream=work("reconstruct"),
        flows=LAYOUT.flows,
        images=batch_images,
    output:
        manifest=work("measure"),
    log:
        f"{RESULTS}/logs/measure/{{batch}}.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("measure"),
        runtime=30,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
        # stacks segmented plane by plane get ImageJ's rows per slice, 3-D objects one row each; --geojson
        args=step_args(workflow_args.measure_args),
    shell:
        batch_args("measure") + " {params.args} {params.limit} > {log:q} 2>&1"
