"""The export layer: labels -> what Fiji, QuPath and tables read.

ImageJ ROI sets, pixel-exact (:mod:`.rois`) and back to labels (:mod:`.roi_import`); per-cell measurements
with ImageJ's definitions (:mod:`.measure`, 3-D: :mod:`.measure3d`); QuPath GeoJSON (:mod:`.geojson`); the
QC overlay (:mod:`.overlay`); and all of these written window by window for images too large to hold
(:mod:`.blockout`). The measurement table's columns, type and CSV, shared by 2-D and 3-D, are in :mod:`.table`.
The commands that read and write these files (``cpsnake rois | measure | geojson | overlay``) are in
:mod:`cpsnake.steps`.

May import: :mod:`cpsnake.engine` and below (not :mod:`cpsnake.stacks`).
"""
