# A batch of normalized images -> flows (dY, dX, cellprob logits): the model is loaded once and the
# tiles of the batch's images share network batches. Threads reach torch through OMP_NUM_THREADS
# (Snakemake sets it to the job's threads); a job given resources gpu > 0 (see workflow/profiles/slurm)
# runs on CUDA, otherwise the device is chosen automatically.


rule infer:
    input:
        images=LAYOUT.normalized,
        # the batch's images: ties the job to the samples checkpoint (its params and resources read it)
        sources=batch_images,
        upstream=work("normalize"),
        model=MODEL_FILE,
    output:
        flows=intermediate(directory(LAYOUT.flows), "flows"),
        manifest=work("infer"),
    log:
        f"{RESULTS}/logs/infer/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/infer/{{batch}}.tsv"
    conda:
        "../../envs/cpsnake.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb("infer"),
        runtime=120,
        gpu=0,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
        args=step_args(workflow_args.infer_args),
    shell:
        # cuda when the job was given a GPU (resources gpu > 0), else auto (cuda, mps or cpu)
        "device=$([ {resources.gpu} -gt 0 ] && echo cuda || echo auto); "
        + batch_args("infer")
        + " --model {input.model:q} --device $device {params.args} {params.limit} > {log:q} 2>&1"
