"""The steps layer: one thin module per rule of the workflow, argv and files around the engine.

Each module reads its command line, checks every option and input that needs no torch first, reads its
input files, calls the pure functions below (:mod:`cpsnake.engine`, :mod:`cpsnake.stacks`,
:mod:`cpsnake.export`), writes its outputs, and has ``main(argv=None) -> int``: ``cpsnake <step> ...`` and
``python -m cpsnake.steps.<step> ...`` are the same program. :mod:`.normalize` (image -> normalized image),
:mod:`.infer` (normalized image -> flows), :mod:`.reconstruct` (flows -> labels), :mod:`.rois` (labels <-> ImageJ
RoiSet.zip), :mod:`.measure` (per-cell table), :mod:`.geojson` (QuPath GeoJSON), :mod:`.overlay` (QC picture),
:mod:`.weights` (the weights registry and cache); :mod:`.stack_options` holds the stack options these steps, ``cpsnake
segment`` and
``cpsnake batch`` share.

May import: :mod:`cpsnake.export`, :mod:`cpsnake.stacks`, :mod:`cpsnake.engine`, :mod:`cpsnake.models`,
:mod:`cpsnake.io`, :mod:`cpsnake.errors` and :mod:`cpsnake.bounds` (not :mod:`cpsnake.run`,
:mod:`cpsnake.training` or :mod:`cpsnake.cli`, which sit above or beside it).
"""
