"""The io layer: bytes <-> arrays, safely. The bottom of cpsnake's layers.

What a file holds and how it is opened, read whole or by region, and written:

* :mod:`.inputs` -- the one dispatcher that decides how an input is opened (TIFF / OME-TIFF / PNG / JPEG /
  OME-Zarr; its header only, whole, or by region); :mod:`.formats` tells a file's format from its first bytes;
* :mod:`.tiff` (TIFF read with hostile metadata in mind, ImageJ TIFF written), :mod:`.png_jpeg`,
  :mod:`.regions` (large images read region by region) and :mod:`.omezarr` (OME-Zarr folders, read from
  inside themselves only);
* the files steps pass to each other: :mod:`.labels` (label images), :mod:`.flows` (flows files);
  :mod:`.ngff` (OME-Zarr labels written), :mod:`.tables` (CSV cells), :mod:`.calibration` (pixel size, Z step,
  frame interval);
* the limits every reader checks before it allocates (:mod:`.limits`), regular files only and hashing
  (:mod:`.files`), and outputs written under a temporary name, all or nothing (:mod:`.outputs`).

May import: :mod:`cpsnake.errors` and :mod:`cpsnake.bounds` only (no layer above: no network, no engine).
"""
