"""The run layer: whole runs.

The one-process chain (:mod:`.segment`), a run's samples and batches (:mod:`.samples`), a workflow step over
a batch (:mod:`.batch`) and a block of a large image (:mod:`.blockjob`), the run tables (:mod:`.aggregate`),
provenance (:mod:`.provenance`), job memory requests (:mod:`.jobmem`) and the workflow's config
(:mod:`.config`): what the Snakemake rules call.

May import: every layer below (steps, training, export, stacks, engine, models, io).
"""
