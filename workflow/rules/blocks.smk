# One block of a large 2-D TIFF -> RESULTS/work/BATCH/blocks/NAME/K.npz: pass 1 of block-wise segmentation
# (the block's flows from the whole image's tile grid, its masks up to the flow-error check), read region
# by region with the values the normalize step streamed. The reconstruct step assembles the blocks into one
# label image (pass 2).
# Which images go in blocks, and their grids, come from the samples table (config blocks).


rule block:
    input:
        upstream=work("normalize"),
        # its own image only: a change to another image of the batch does not rerun this block
        source=lambda wildcards: block_sample(wildcards).path,
        model=MODEL_FILE,
    output:
        intermediate(LAYOUT.block, "flows"),
    log:
        f"{RESULTS}/logs/block/{{batch}}/{{sample}}/{{k}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/block/{{batch}}/{{sample}}/{{k}}.tsv"
    wildcard_constraints:
        sample=r"[^/]+",  # a file's name, whatever it starts with
        k=r"[0-9]+",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 2
    resources:
        mem_mb=block_mem_mb,
        runtime=120,
        gpu=0,
    params:
        samples=batch_signature,
        limit=step_args(workflow_args.limit_args),
        args=step_args(workflow_args.block_args),
    shell:
        # options first, then `--`: a sample name may start with '-'
        "device=$([ {resources.gpu} -gt 0 ] && echo cuda || echo auto); "
        f"{CPSNAKE} block --results {shlex.quote(RESULTS)}"
        " --model {input.model:q} --device $device {params.args} {params.limit}"
        f" -- {shlex.quote(SAMPLES_TABLE)} {{wildcards.batch}} {{wildcards.sample:q}} {{wildcards.k}} > {{log:q}} 2>&1"
