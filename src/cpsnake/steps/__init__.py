"""The steps layer: one thin module per pipeline step, argv and files around the engine and the exporters.

Each step module has a ``main(argv=None) -> int`` (``cpsnake STEP ...`` and ``python -m cpsnake.steps.STEP ...``
are the same program) and the ``*_file`` functions that read its inputs and write its outputs.

May import: :mod:`cpsnake.export`, :mod:`cpsnake.stacks`, :mod:`cpsnake.engine` and below.
"""
