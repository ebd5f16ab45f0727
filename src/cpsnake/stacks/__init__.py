"""The stacks layer: Z and T on top of the engine.

A stack segmented plane by plane, with its planes linked (:mod:`.stitch`, cellpose's ``stitch3D``) or in
3-D (:mod:`.stack`), and a time series' frames linked into tracks (:mod:`.track`).

May import: :mod:`cpsnake.engine` and below.
"""
