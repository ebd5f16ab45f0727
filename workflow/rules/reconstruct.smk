# A batch of flows -> label images RESULTS/masks/NAME.tif (and with config ome_zarr: true RESULTS/masks/NAME.zarr) (flow following, flow-error QC, hole filling,
# min/max size), ImageJ uint16 TIFFs. Given a GPU (resources gpu > 0, e.g. --set-resources
# reconstruct:gpu=1) the flow following, seeding and flow-error check run on it, with the same labels.


rule reconstruct:
    input:
        flows=LAYOUT.flows,
        # the batch's images: ties the job to the samples checkpoint (its params and resources read it)
        sources=batch_images,
        upstream=work("infer"),
        # images segmented in blocks: their block jobs' files (assembled here into one label image)
        blocks=block_files,
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
        mem_mb=mem_mb("reconstruct"),
        runtime=60,
        gpu=0,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
        args=step_args(workflow_args.reconstruct_args),
    shell:
        # on a GPU when the job was given one (flow following, seeding, flow-error check), else the CPU path
        "device=$([ {resources.gpu} -gt 0 ] && echo cuda || echo cpu); "
        + batch_args("reconstruct")
        + " --device $device {params.args} {params.limit} > {log:q} 2>&1"
