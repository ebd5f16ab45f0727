"""Label image <-> ImageJ ROI set: pixel-exact outlines, round trips, empty input, malformed zips."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from paths import DATA as TEST_DATA
from synthetic import hard_shapes

from cpsnake.errors import CpsnakeError
from cpsnake.export.roi_import import read_rois, roi_mask, rois_to_labels
from cpsnake.export.rois import labels_to_rois, trace_outlines, write_rois
from cpsnake.io.labels import read_labels, write_labels
from cpsnake.io.tiff import write_tiff
from cpsnake.steps.rois import main

DATA = TEST_DATA / "nuclei_val"
VAL = sorted(p.stem for p in (DATA / "masks").glob("*.tif"))


def test_rectangle_outline_is_on_pixel_edges():
    a = np.zeros((10, 14), np.int32)
    a[2:8, 2:12] = 1
    ids, outs = trace_outlines(a)
    assert ids.tolist() == [1]
    assert outs[0][0].tolist() == [[2, 2], [12, 2], [12, 8], [2, 8]]  # top-left first, clockwise on screen


def test_single_pixel_becomes_unit_square():
    a = np.zeros((3, 3), np.int32)
    a[1, 1] = 4
    (roi,) = labels_to_rois(a)
    assert roi.roitype.name == "TRACED"
    assert roi.coordinates().tolist() == [[1, 1], [2, 1], [2, 2], [1, 2]]
    assert roi.name == "4"


def test_holes_and_pieces_become_composite_rois():
    a = hard_shapes()
    rois = {r.name: r for r in labels_to_rois(a)}
    assert rois["02"].composite and len(rois["02"].coordinates(multi=True)) == 2
    assert rois["04"].composite
    assert not rois["01"].composite and not rois["08"].composite  # corner-touching blocks: one traced outline


def test_names_are_zero_padded_label_ids_in_order():
    a = np.zeros((4, 200), np.int32)
    for i, lab in enumerate([3, 120, 7]):
        a[1, 10 * i] = lab
    names = [r.name for r in labels_to_rois(a)]
    assert names == ["003", "007", "120"]


def test_roundtrip_hard_shapes():
    a = hard_shapes()
    back = rois_to_labels([(r.name + ".roi", r) for r in labels_to_rois(a)], a.shape)
    assert np.array_equal(back, a)


@pytest.mark.parametrize("name", VAL)
def test_roundtrip_real_masks(name, tmp_path):
    lab, _ = read_labels(DATA / "masks" / f"{name}.tif")
    write_rois(tmp_path / "r.zip", labels_to_rois(lab))
    back = rois_to_labels(read_rois(tmp_path / "r.zip"), lab.shape)
    assert np.array_equal(back, lab)


def test_roundtrip_3d_and_time_positions(tmp_path):
    a = np.stack([hard_shapes(), np.roll(hard_shapes(), 3, axis=1), np.zeros((48, 64), np.int32)])
    rois = labels_to_rois(a)
    assert {r.z_position for r in rois} == {1, 2}
    assert rois[0].name == "01-z1" and rois[1].name == "01-z2"
    write_rois(tmp_path / "r.zip", rois)
    assert np.array_equal(rois_to_labels(read_rois(tmp_path / "r.zip"), a.shape), a)
    trois = labels_to_rois(a, stack_axis="t")
    assert {r.t_position for r in trois} == {1, 2} and {r.z_position for r in trois} == {0}
    assert np.array_equal(rois_to_labels([(r.name, r) for r in trois], a.shape, stack_axis="t"), a)


def test_cli_roundtrip_keeps_shape_and_calibration(tmp_path):
    a = np.stack([hard_shapes(), hard_shapes()[::-1]])
    write_labels(tmp_path / "lab.tif", a, pixel_size=(0.5, 0.5), unit="um")
    write_tiff(
        tmp_path / "img.tif", np.zeros((2, 1) + a.shape[1:], np.uint8), axes="ZCYX", pixel_size=(0.5, 0.5), unit="um"
    )
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "r.zip")]) == 0
    assert (
        main(["--import", str(tmp_path / "r.zip"), "--like", str(tmp_path / "img.tif"), str(tmp_path / "back.tif")])
        == 0
    )
    back, meta = read_labels(tmp_path / "back.tif")
    assert np.array_equal(back, a)
    assert meta["pixel_size"] == pytest.approx((0.5, 0.5))


def test_empty_labels_give_valid_empty_zip(tmp_path, capsys):
    write_labels(tmp_path / "lab.tif", np.zeros((8, 8), np.int32))
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "r.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        assert zf.testzip() is None and zf.namelist() == []
    assert "no labels" in capsys.readouterr().err


def test_import_imagej_roi_types():
    from roifile import ROI_TYPE, ImagejRoi

    shape = (20, 20)
    rect = ImagejRoi(roitype=ROI_TYPE.RECT, left=2, top=3, right=7, bottom=5)
    assert roi_mask(rect, shape).sum() == 10
    poly = ImagejRoi.frompoints(np.array([[1.0, 1.0], [9.0, 1.0], [9.0, 9.0], [1.0, 9.0]]))
    assert roi_mask(poly, shape).sum() == 64
    oval = ImagejRoi(roitype=ROI_TYPE.OVAL, left=0, top=0, right=10, bottom=10)
    m = roi_mask(oval, shape)
    assert m[5, 5] and not m[0, 0] and m.sum() < 100


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in entries.items():
            zf.writestr(k, v)
    return path


def test_malformed_entry_is_named(tmp_path):
    good = labels_to_rois(hard_shapes())[0].tobytes()
    z = _zip(tmp_path / "bad.zip", {"0001.roi": good, "../../evil.roi": b"Iout" + b"\x00" * 3})
    with pytest.raises(CpsnakeError, match="evil.roi"):
        read_rois(z)
    assert not (tmp_path.parent.parent / "evil.roi").exists()


def test_non_roi_entry_is_rejected(tmp_path):
    z = _zip(tmp_path / "bad.zip", {"notes.txt": b"hello"})
    with pytest.raises(CpsnakeError, match="notes.txt.*Iout"):
        read_rois(z)


def test_line_roi_is_not_an_area(tmp_path):
    from roifile import ROI_TYPE, ImagejRoi

    line = ImagejRoi(roitype=ROI_TYPE.LINE, x1=1, y1=1, x2=5, y2=5, name="l")
    z = _zip(tmp_path / "l.zip", {"l.roi": line.tobytes()})
    with pytest.raises(CpsnakeError, match="'l.roi'.*not an area"):
        rois_to_labels(read_rois(z), (8, 8))


def test_broken_zip_and_failed_cli_leave_no_output(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04garbage")
    write_tiff(tmp_path / "img.tif", np.zeros((1, 8, 8), np.uint8), axes="CYX")
    rc = main(["--import", str(tmp_path / "x.zip"), "--like", str(tmp_path / "img.tif"), str(tmp_path / "o.tif")])
    assert rc == 1 and not (tmp_path / "o.tif").exists()


def test_roi_without_position_fills_every_slice():
    a = np.zeros((5, 6), np.int32)
    a[1:3, 1:4] = 9
    (roi,) = labels_to_rois(a)
    back = rois_to_labels([("9.roi", roi)], (3, 5, 6))
    assert all(np.array_equal(s, a) for s in back)


def test_curved_composite_is_a_clear_error():
    from roifile import ROI_TYPE, ImagejRoi

    roi = ImagejRoi(roitype=ROI_TYPE.RECT, name="c")
    roi.multi_coordinates = np.array([0, 1, 1, 3, 2, 2, 3, 3, 4, 4, 5, 5, 4], np.float32)  # MOVETO, CUBICTO, CLOSE
    roi.shape_roi_size = roi.multi_coordinates.size
    with pytest.raises(CpsnakeError, match="'c.roi'.*curved"):
        roi_mask(roi, (8, 8), entry="c.roi")


def test_cpsnake_rois_dispatch(tmp_path):
    from cpsnake.cli import main as cli

    write_labels(tmp_path / "lab.tif", hard_shapes())
    assert cli(["rois", str(tmp_path / "lab.tif"), str(tmp_path / "r.zip")]) == 0
    assert len(zipfile.ZipFile(tmp_path / "r.zip").namelist()) == len(np.unique(hard_shapes())) - 1


def test_wide_image_round_trip_beyond_16_bit_bounds(tmp_path):
    """Export then import on a 70,000 px wide image (objects past x = 32,767 / 60,535 / 65,535, a hole, two
    pieces): the label image comes back exactly; traced ROIs past 32,767 carry float coordinates.

    Catches: header bounds wrapped at 16 bits on either side of the round trip.
    """
    from synthetic import wide_labels

    lab = wide_labels()
    rois = labels_to_rois(lab)
    write_rois(tmp_path / "r.zip", rois)
    assert np.array_equal(rois_to_labels(read_rois(tmp_path / "r.zip"), lab.shape), lab)
    far = [r for r in rois if not r.composite and r.right > 32767]
    assert far and all(r.subpixel_coordinates is not None for r in far)
    assert all(r.subpixel_coordinates is None for r in rois if r.right <= 32767)
