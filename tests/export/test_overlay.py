"""The QC overlay: outlines over the image (cpsnake.export.overlay) and its command."""

from __future__ import annotations

import numpy as np
import tifffile

from cpsnake.export import overlay
from cpsnake.steps import overlay as overlay_step

# --- overlay ---------------------------------------------------------------------------------------


def test_outlines_are_the_label_pixels_touching_another_value():
    labels = np.zeros((6, 7), np.int32)
    labels[1:5, 1:4] = 1  # 4x3 block: its 2x1 inside is not outline
    labels[1:5, 4:6] = 2  # touches label 1: all its pixels are outline
    edge = overlay.outlines(labels)
    inside = np.zeros_like(edge)
    inside[2:4, 2] = True
    assert np.array_equal(edge, (labels > 0) & ~inside)


def test_render_grey_image_draws_outlines_in_label_colours():
    img = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 2:6] = 7
    rgb = overlay.render(img, labels)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    edge = overlay.outlines(labels)
    assert (rgb[edge] == overlay.label_colours(np.array([7]))[0]).all()
    grey = rgb[~edge]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()  # first channel, grey


def test_render_three_channels_as_rgb_and_flat_channel_as_black():
    img = np.zeros((3, 4, 4), np.float32)
    img[0] = np.arange(16).reshape(4, 4)
    rgb = overlay.render(img, np.zeros((4, 4), np.int32))
    assert rgb[..., 0].max() == 255 and rgb[..., 1].max() == 0 and rgb[..., 2].max() == 0


def test_label_colours_differ_for_neighbouring_ids():
    colours = overlay.label_colours(np.arange(1, 50))
    assert colours.dtype == np.uint8 and colours.shape == (49, 3)
    assert (np.abs(np.diff(colours.astype(int), axis=0)).sum(axis=1) > 60).all()


def test_overlay_cli_writes_png_and_rejects_mismatched_labels(tmp_path):
    from PIL import Image

    from cpsnake.io.labels import write_labels

    tifffile.imwrite(tmp_path / "img.tif", np.random.default_rng(0).integers(0, 4000, (20, 30), dtype=np.uint16))
    labels = np.zeros((20, 30), np.int32)
    labels[5:12, 5:15] = 1
    write_labels(tmp_path / "lab.tif", labels, pixel_size=None, unit=None)
    assert overlay_step.main([str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), str(tmp_path / "o.png")]) == 0
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (30, 20) and im.mode == "RGB"
    write_labels(tmp_path / "small.tif", labels[:10], pixel_size=None, unit=None)
    assert overlay_step.main([str(tmp_path / "img.tif"), str(tmp_path / "small.tif"), str(tmp_path / "p.png")]) == 1
    assert not (tmp_path / "p.png").exists()
