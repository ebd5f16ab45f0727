"""cpsnake: Cellpose-SAM cell segmentation as a Snakemake workflow, with results for Fiji/ImageJ.

The pure functions (arrays in, arrays out) live in :mod:`cpsnake.engine` and the layers beside it; each
pipeline step is a thin ``main(argv=None) -> int`` command line around them in :mod:`cpsnake.steps`,
dispatched by ``cpsnake <step>`` (see :mod:`cpsnake.cli`).
"""

__version__ = "0.1.0"
