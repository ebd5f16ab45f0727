"""The io layer: bytes <-> arrays, safely. The bottom of cpsnake's layers.

What a file holds and how it is opened, read whole or by region, and written: images (TIFF / OME-TIFF,
PNG, JPEG, OME-Zarr), label images, flows and normalized images, calibration, NGFF metadata, tables; the
limits every reader checks before it allocates (:mod:`.limits`), regular files only (:mod:`.files`), and
outputs written under a temporary name, all or nothing (:mod:`.outputs`).

May import: :mod:`cpsnake.errors` and :mod:`cpsnake.bounds` only (no layer above: no network, no engine).
"""
