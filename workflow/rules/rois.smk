# Label image -> ImageJ RoiSet.zip (one traced ROI per cell; Fiji's ROI Manager opens it).


rule rois:
    input:
        f"{RESULTS}/masks/{{sample}}.tif",
    output:
        f"{RESULTS}/rois/{{sample}}.zip",
    log:
        f"{RESULTS}/logs/rois/{{sample}}.log",
    conda:
        "../../envs/cpsnake.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(500, 10),
        runtime=10,
    params:
        limit=limit_args(),
    shell:
        "cpsnake rois {input:q} {output:q} {params.limit} > {log:q} 2>&1"
