# A batch of label images -> ImageJ RoiSet.zip files RESULTS/rois/NAME.zip (one traced ROI per cell).


rule rois:
    input:
        upstream=work("reconstruct"),
        # the batch's images: ties the job to the samples checkpoint (its params and resources read it)
        sources=batch_images,
    output:
        manifest=work("rois"),
    log:
        f"{RESULTS}/logs/rois/{{batch}}.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb("rois"),
        runtime=30,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
    shell:
        batch_args("rois") + " {params.limit} > {log:q} 2>&1"
