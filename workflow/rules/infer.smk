# Normalized image -> flows (dY, dX, cellprob logits), tiled network inference. The heavy step:
# threads reach torch through OMP_NUM_THREADS (Snakemake sets it to the job's threads); a job given
# resources gpu > 0 (see workflow/profiles/slurm) runs on CUDA, otherwise the device is chosen automatically.


rule infer:
    input:
        image=f"{RESULTS}/normalized/{{sample}}.tif",
        model=MODEL_FILE,
    output:
        intermediate(f"{RESULTS}/flows/{{sample}}.tif", "flows"),
    log:
        f"{RESULTS}/logs/infer/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/infer/{{sample}}.tsv"
    conda:
        "../../envs/cpsnake.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(2000, 4),
        runtime=60,
        gpu=0,
    params:
        limit=limit_args(),
        args=infer_args(),
        device=infer_device,
    shell:
        "cpsnake infer {input.image:q} {output:q} --model {input.model:q} --device {params.device}"
        " {params.args} {params.limit} > {log:q} 2>&1"
