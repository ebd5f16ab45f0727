"""The stacks layer: Z and T on top of the engine.

A stack segmented plane by plane, with its planes linked (:mod:`.stitch`, cellpose's ``stitch3D``) or in
3-D (:mod:`.stack`), and a time series' frames linked into tracks (:mod:`.track`); :mod:`.planes` makes the planes'
ids distinct over the stack before they are linked (or when they are not).

May import: :mod:`cpsnake.engine` and below.
"""
