"""The files of a label image too large to hold, written window by window (:mod:`cpsnake.export.blockout`)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cpsnake.engine import dynamics
from cpsnake.export import blockout


def _labels(shape=(300, 340), seed=1) -> np.ndarray:
    """Ellipses (test_blocks'), plus one object in two pieces far apart, one with a hole, and objects on the
    image's edges; ids by first pixel in raster order, as block-wise labels are numbered."""
    from synthetic import ellipses

    lab = ellipses(shape, n=120, seed=seed)
    top = lab.max()
    lab[5:12, 300:330] = top + 1  # two pieces of one object: 60 px apart
    lab[40:47, 240:270] = top + 1
    lab[200:230, 10:40] = top + 2  # a ring: its hole holds another object
    lab[210:220, 20:30] = top + 3
    lab[-6:, -9:] = top + 4  # on the bottom-right corner
    return dynamics.renumber(lab)


def _written(root: Path) -> dict:
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and ".zarr" not in f.parts[-2] and not any(p.endswith(".zarr") for p in f.parts):
            if f.suffix == ".zip":  # entries and their bytes (a zip's own header holds the time of writing)
                with zipfile.ZipFile(f) as zf:
                    out[f.relative_to(root)] = [(n, zf.read(n)) for n in zf.namelist()]
            else:
                out[f.relative_to(root)] = f.read_bytes()
    return out


@pytest.mark.parametrize("tile, source", [(64, "zarr"), (1000, "zarr"), (64, "tiff, ids shuffled")])
def test_windowed_outputs_equal_the_whole_images(tmp_path, monkeypatch, tile, source):
    """Labels in a Zarr array (or a label TIFF read by region, :class:`blockout.TiffLabels`, with ids not in
    raster order) and a 2-channel TIFF read by region, written window by window (tiles of 64 px: dozens of
    windows, objects across tile borders, a two-piece object whose pieces lie in different tiles, ROIs and
    features ordered across rows of tiles; and one tile), give the same bytes as the whole-image path
    (`segment._image_outputs` without flows): label TIFF, ROI entries, table, GeoJSON, overlay (shown every
    3rd pixel: MAX_SIDE 128) and OME-Zarr labels (3 levels).

    Catches: measurements or ROIs not moved to the image's coordinates, rows out of id order, an object
    measured twice or cut by its window, another object's pixels left in a window, an overlay stride that
    starts elsewhere, a TIFF band written at the wrong offset or byte order.
    """
    import tifffile
    import zarr

    from cpsnake.export import overlay
    from cpsnake.io import inputs, ngff
    from cpsnake.run.segment import _image_outputs

    monkeypatch.setattr(overlay, "MAX_SIDE", 128)
    monkeypatch.setattr(ngff, "LEVEL_MIN", 100)
    lab = _labels()
    rng = np.random.default_rng(2)
    img = rng.integers(0, 4000, size=(2, *lab.shape), dtype=np.uint16)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, img, imagej=True, metadata={"axes": "CYX", "unit": "micron"}, resolution=(2.0, 4.0))
    region = inputs.open_regions(path)
    meta = region.meta
    assert meta["pixel_size"] == (0.25, 0.5)
    if source == "zarr":
        store = zarr.create_array(
            str(tmp_path / "l.zarr"), shape=lab.shape, chunks=(50, 70), dtype="int32", fill_value=0
        )
        store[:] = lab
    else:
        from cpsnake.io.labels import write_labels

        perm = np.r_[0, rng.permutation(np.arange(1, lab.max() + 1))].astype(np.int32)
        lab = perm[lab]
        write_labels(tmp_path / "l.tif", lab)
        store = blockout.TiffLabels(tmp_path / "l.tif")
    blockout.write_outputs(
        tmp_path / "b", "slide", path, region, store, int(lab.max()), meta, geojson=True, ome_zarr=True, tile=tile
    )
    region.close()
    _image_outputs(tmp_path / "w", "slide", path, img, meta, lab, None, geojson=True, ome_zarr=True)
    got, want = _written(tmp_path / "b"), _written(tmp_path / "w")
    assert sorted(got) == sorted(want) and len(want) == 5
    for k in want:
        assert got[k] == want[k], k
    for k in range(3):
        a = zarr.open_array(str(tmp_path / "b" / "masks" / "slide.zarr" / "labels" / "cells" / str(k)))
        b = zarr.open_array(str(tmp_path / "w" / "masks" / "slide.zarr" / "labels" / "cells" / str(k)))
        assert np.array_equal(a[:], b[:])
    from PIL import Image

    assert Image.open(tmp_path / "b" / "overlays" / "slide.png").size == (114, 100)


def test_object_boxes_are_find_objects(tmp_path):
    """Boxes read chunk by chunk (7 px chunks: every object across chunk borders) equal scipy's
    find_objects on the whole array; absent ids are marked empty."""
    from scipy import ndimage

    lab = _labels((90, 110), seed=3)
    lab[lab == 5] = 0
    lab[lab == lab.max()] = 0  # the largest id absent: the boxes stop at the largest present
    box = blockout.object_boxes(lab, chunk=7)
    assert len(box) == lab.max() + 1
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            assert box[i, 0] == 90
        else:
            assert tuple(box[i]) == (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)


def test_big_label_tiff_is_written_tile_by_tile(tmp_path, monkeypatch, capsys):
    """Beyond the classic TIFF's 4 GB (lowered here to 10 kB) the label TIFF is a BigTIFF OME-TIFF written tile
    by tile, the same bytes as :func:`cpsnake.io.labels.write_labels` of the whole array (but for the file's UUID);
    float32 above 65,535
    labels, as there."""
    import tifffile

    from cpsnake.io.labels import write_labels

    monkeypatch.setattr("cpsnake.io.labels.CLASSIC_TIFF_BYTES", 10_000)
    lab = _labels((1100, 1030))
    lab[lab > 0] += 70_000
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    blockout.write_label_tiff(a, lab, int(lab.max()), pixel_size=(0.5, 0.5), unit="micron")
    write_labels(b, lab, pixel_size=(0.5, 0.5), unit="micron")
    uuid = re.compile(rb'UUID="urn:uuid:[0-9a-f-]+"')  # tifffile gives each OME-TIFF a new one
    assert uuid.sub(b"", a.read_bytes()) == uuid.sub(b"", b.read_bytes())
    with tifffile.TiffFile(a) as tf:
        assert tf.is_bigtiff and tf.is_ome and tf.pages[0].is_tiled
        assert np.array_equal(tf.asarray(), lab.astype(np.float32))
    err = capsys.readouterr().err
    assert err.count("BigTIFF") == 2 and err.count("float32") == 2


@pytest.mark.parametrize("k", [1, 3, 7])
def test_strided_reads_are_every_kth_pixel(k):
    """Every k-th pixel of an array read tile by tile (tiles of 1024-1792 px, the last ones short) equals
    ``arr[..., ::k, ::k]``."""
    arr = np.random.default_rng(k).integers(0, 1000, size=(2, 2500, 3001))
    got = blockout.strided(lambda y0, y1, x0, x1: arr[:, y0:y1, x0:x1], arr.shape[1:], k)
    assert np.array_equal(got, arr[:, ::k, ::k])
