"""The export layer: labels -> what Fiji, QuPath and tables read.

ImageJ ROI sets, pixel-exact (:mod:`.rois`) and back to labels (:mod:`.roi_import`); per-cell measurements
with ImageJ's definitions (:mod:`.measure`, 3-D: :mod:`.measure3d`); QuPath GeoJSON (:mod:`.geojson`); the
QC overlay (:mod:`.overlay`); and all of these written window by window for images too large to hold
(:mod:`.blockout`).

May import: :mod:`cpsnake.engine` and below (not :mod:`cpsnake.stacks`).
"""
