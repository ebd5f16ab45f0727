# cpsnake: Cellpose-SAM segmentation, one job per batch of images and step, results for Fiji/ImageJ.
# The rules live in workflow/rules/ (one file per stage); config keys are documented in
# workflow/schemas/config.schema.yaml.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# Snakemake opens config.yaml itself: a FIFO there would block it forever, so anything but a file is one line
if os.path.lexists("config.yaml") and not os.path.isfile("config.yaml"):
    sys.exit(
        "cpsnake workflow: error: config.yaml: found a FIFO, socket, device, folder or broken link, not a "
        "regular file; expected the workflow's config file (YAML); replace it with a regular file"
    )


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/samples.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/blocks.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/rois.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/overlay.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        LAYOUT.run_outputs,
