"""cpsnake: Cellpose-SAM cell segmentation as a Snakemake workflow, with results for Fiji/ImageJ.

Each pipeline step is a module with pure functions (arrays in, arrays out) and a thin
``main(argv=None) -> int`` command line, dispatched by ``cpsnake <step>`` (see :mod:`cpsnake.cli`).
"""

__version__ = "0.1.0"
