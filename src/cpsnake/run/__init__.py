"""The run layer: whole runs.

The one-process chain (:mod:`.segment`), a run's samples (:mod:`.samples`: sample sheets, folders, headers),
its batches and their manifests (:mod:`.batch`), where its files lie (:mod:`.layout`), a workflow step over a
batch (:mod:`.batchjob`) and a block of a large image (:mod:`.blockjob`), the run tables (:mod:`.aggregate`),
provenance (:mod:`.provenance`), job memory requests (:mod:`.jobmem`), the workflow's config (:mod:`.config`)
and the workflow's arguments (:mod:`.workflow_args`: the model, the results layout and the step options the
Snakemake rules take from the package).

May import: every layer below (steps, training, export, stacks, engine, models, io).
"""
