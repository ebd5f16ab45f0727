"""The engine layer: arrays in, arrays out. Pure functions with their shapes in their docstrings.

Normalization (:mod:`.normalize`), tiling and blending (:mod:`.tiles`), the network over tiles
(:mod:`.infer`, 3-D: :mod:`.infer3d`), size estimation (:mod:`.size`), flows -> masks (:mod:`.reconstruct`,
3-D: :mod:`.reconstruct3d`) with their building blocks (:mod:`.dynamics`, :mod:`.heat`, :mod:`.heat3d`,
:mod:`.follow_block`, :mod:`.follow3d`, :mod:`.tieorder`), and where a large image's blocks are cut and put
together (:mod:`.blocks`). No file is named here and no argument vector is read.
The normalization values of an image too large to hold come from bands of its rows (:mod:`.streamnorm`).

May import: :mod:`cpsnake.models`, :mod:`cpsnake.io` and below.
"""
