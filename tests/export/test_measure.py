"""Per-cell table with ImageJ's definitions (the ImageJ oracle comparison is in test_imagej.py)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from cpsnake.export import measure
from cpsnake.export.measure import fit_ellipse, measure_labels, traced_perimeter
from cpsnake.export.table import columns
from cpsnake.io.flows import write_flows
from cpsnake.io.labels import write_labels
from cpsnake.io.tiff import write_tiff
from cpsnake.steps import measure as measure_step
from cpsnake.steps.measure import main


def _rect():
    lab = np.zeros((10, 14), np.int32)
    lab[2:8, 2:12] = 1
    return lab


def test_rectangle_area_perimeter_feret():
    (row,) = measure_labels(_rect(), np.ones((1, 10, 14))).to_dict("records")
    assert row["Area"] == 60 and row["area_px"] == 60
    assert row["Perim."] == pytest.approx(32 - 4 * (2 - math.sqrt(2)))  # 4 corners, ImageJ's traced rule
    assert row["Feret"] == pytest.approx(math.hypot(10, 6))
    assert row["MinFeret"] == pytest.approx(6)
    assert (row["BX"], row["BY"], row["Width"], row["Height"]) == (2, 2, 10, 6)
    assert (row["X"], row["Y"]) == (7.0, 5.0)
    assert row["Solidity"] == 1.0


def test_single_pixel_perimeter_and_ellipse():
    assert traced_perimeter(np.array([[0, 0], [1, 0], [1, 1], [0, 1]])) == pytest.approx(4 - 2 * (2 - math.sqrt(2)))
    major, minor, _ = fit_ellipse(np.array([0]), np.array([0]))
    assert major == pytest.approx(minor) and major == pytest.approx(2 / math.sqrt(math.pi))


def test_intensity_columns_per_channel():
    lab = _rect()
    img = np.stack([np.full(lab.shape, 2.0), np.arange(140, dtype=float).reshape(10, 14)])
    (row,) = measure_labels(lab, img).to_dict("records")
    assert row["Mean_c1"] == 2.0 and row["StdDev_c1"] == 0.0 and row["RawIntDen_c1"] == 120.0
    vals = img[1][lab == 1]
    assert row["Mean_c2"] == pytest.approx(vals.mean()) and row["StdDev_c2"] == pytest.approx(vals.std(ddof=1))
    assert row["Min_c2"] == vals.min() and row["Max_c2"] == vals.max()
    assert set(row) == set(columns(2))


def test_calibrated_lengths_and_areas():
    (row,) = measure_labels(_rect(), np.ones((1, 10, 14)), pixel_size=(0.5, 0.5)).to_dict("records")
    assert row["Area"] == 15.0 and row["area_px"] == 60
    assert row["Feret"] == pytest.approx(0.5 * math.hypot(10, 6))
    assert row["Width"] == 5.0


def test_cli_writes_header_and_rows(tmp_path):
    write_labels(tmp_path / "lab.tif", _rect(), pixel_size=(0.5, 0.5), unit="um")
    write_tiff(tmp_path / "img.tif", np.ones((2, 10, 14), np.uint16), axes="CYX", pixel_size=(0.5, 0.5), unit="um")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert list(rows[0]) == columns(2)
    assert rows[0]["image"] == "img.tif" and float(rows[0]["Area"]) == 15.0


def test_empty_labels_give_header_only(tmp_path):
    write_labels(tmp_path / "lab.tif", np.zeros((6, 6), np.int32))
    write_tiff(tmp_path / "img.tif", np.ones((1, 6, 6), np.uint8), axes="CYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines == [",".join(columns(1))]


def test_stack_rows_per_label_and_slice(tmp_path):
    lab = np.stack([_rect(), np.zeros((10, 14), np.int32), _rect() * 2])
    write_labels(tmp_path / "lab.tif", lab)
    write_tiff(tmp_path / "img.tif", np.ones((3, 1, 10, 14), np.uint8), axes="ZCYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv"), "--per-slice"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [(r["label"], r["slice"]) for r in rows] == [("1", "1"), ("2", "3")]


def test_z_stack_rows_per_3d_object_calibrated(tmp_path):
    lab = np.zeros((4, 10, 14), np.int32)
    lab[0:3, 2:6, 3:8] = 5  # 3 x 4 x 5 = 60 voxels
    lab[3, 1:3, 1:3] = 9
    write_labels(tmp_path / "lab.tif", lab)
    write_tiff(
        tmp_path / "img.tif",
        np.full((4, 1, 10, 14), 7, np.uint8),
        axes="ZCYX",
        pixel_size=(0.5, 0.5),
        unit="um",
        metadata={"spacing": 2.0},
    )
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [(r["label"], r["image"], r["voxels"], r["slices"]) for r in rows] == [
        ("5", "img.tif", "60", "3"),
        ("9", "img.tif", "4", "1"),
    ]
    assert float(rows[0]["volume"]) == 60 * 2.0 * 0.5 * 0.5 and float(rows[0]["Mean"]) == 7.0


def test_z_step_of_an_uncalibrated_stack_is_in_pixels(tmp_path):
    """ImageJ's ``spacing`` without a unit is a voxel depth in pixels: the volume counts it.

    Catches: the stored z step ignored when the pixel size is not calibrated (volume = voxel count).
    """
    lab = np.zeros((4, 10, 14), np.int32)
    lab[0:3, 2:6, 3:8] = 5  # 60 voxels
    write_labels(tmp_path / "lab.tif", lab)
    write_tiff(tmp_path / "img.tif", np.ones((4, 1, 10, 14), np.uint8), axes="ZCYX", metadata={"spacing": 2.0})
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    (row,) = csv.DictReader(open(tmp_path / "t.csv"))
    assert float(row["volume"]) == 60 * 2.0 and row["voxels"] == "60"


def test_time_series_rows_per_object_and_frame(tmp_path):
    lab = np.stack([_rect(), _rect()])
    write_labels(tmp_path / "lab.tif", lab, stack_axes="T")
    write_tiff(tmp_path / "img.tif", np.ones((2, 1, 10, 14), np.uint8), axes="TCYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [(r["label"], r["frame"]) for r in rows] == [("1", "1"), ("1", "2")] and "slice" not in rows[0]


def test_shape_mismatch_is_one_clear_error(tmp_path, capsys):
    write_labels(tmp_path / "lab.tif", _rect())
    write_tiff(tmp_path / "img.tif", np.ones((1, 5, 5), np.uint8), axes="CYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 1
    err = capsys.readouterr().err
    assert "img.tif" in err and "expected" in err and not (tmp_path / "t.csv").exists()


# --- quality columns ---------------------------------------------------------------------------------


def _two_cells():
    labels = np.zeros((40, 60), np.int32)
    labels[5:25, 5:25] = 3  # ids need not be consecutive
    labels[10:30, 35:55] = 9
    return labels


def test_quality_flow_error_is_zero_for_a_cells_own_flows_and_grows_as_they_weaken():
    """flow_error = mean squared difference between the cell's own unit flows and the predicted flows / 5."""
    from cpsnake.engine.heat import masks_to_flows

    labels = _two_cells()
    mu = masks_to_flows(labels)  # unit vectors inside the cells (0 where the heat has no gradient)
    flows = np.zeros((3, *labels.shape), np.float32)
    flows[:2] = 5 * mu
    flows[:2, :, 30:] *= 0.5  # the second cell's predicted flows at half speed
    errors, prob = measure.quality(labels, flows)
    own = [float((np.sum(mu**2, axis=0))[labels == i].mean()) for i in (3, 9)]  # ~1: |mu| = 1 almost everywhere
    assert own[0] > 0.95 and own[1] > 0.95
    assert errors[0] == pytest.approx(0.0, abs=1e-12)
    assert errors[1] == pytest.approx(0.25 * own[1], rel=1e-6)  # |mu - mu/2|^2 = |mu|^2 / 4
    flows[:2] = 0  # no predicted flow at all
    errors, _ = measure.quality(labels, flows)
    assert errors == pytest.approx(own, rel=1e-6)


def test_quality_cellprob_is_the_mean_probability_of_the_cells_pixels():
    labels = _two_cells()
    flows = np.zeros((3, *labels.shape), np.float32)
    flows[2] = 2.0
    flows[2, 10:30, 35:45] = -50.0  # half of cell 9 certain background, half logit 2
    _, prob = measure.quality(labels, flows)
    p2 = 1 / (1 + np.exp(-2.0))
    assert prob[0] == pytest.approx(p2, rel=1e-9)
    assert prob[1] == pytest.approx(0.5 * p2, rel=1e-6)


def test_table_gets_quality_columns_only_with_flows(tmp_path):
    labels = _two_cells()
    img = np.random.default_rng(0).integers(0, 1000, (1, *labels.shape)).astype(np.uint16)
    flows = np.zeros((3, *labels.shape), np.float32)
    rows = measure.measure_labels(labels, img, flows=flows).to_dict("records")
    assert [r["label"] for r in rows] == [3, 9] and all(r["flow_error"] > 0.9 and r["cellprob"] == 0.5 for r in rows)
    assert "flow_error" not in measure.measure_labels(labels, img).columns
    assert columns(1, quality=True)[-2:] == ["flow_error", "cellprob"]
    write_labels(tmp_path / "l.tif", labels)
    write_tiff(tmp_path / "i.tif", img, axes="CYX")
    write_flows(tmp_path / "f.tif", flows)
    assert (
        measure_step.main(
            [
                str(tmp_path / "l.tif"),
                str(tmp_path / "i.tif"),
                str(tmp_path / "m.csv"),
                "--flows",
                str(tmp_path / "f.tif"),
            ]
        )
        == 0
    )
    table = (tmp_path / "m.csv").read_text().splitlines()
    assert table[0].endswith(",flow_error,cellprob") and len(table) == 3
    write_flows(tmp_path / "g.tif", flows[:, :20])
    assert (
        measure_step.main(
            [
                str(tmp_path / "l.tif"),
                str(tmp_path / "i.tif"),
                str(tmp_path / "n.csv"),
                "--flows",
                str(tmp_path / "g.tif"),
            ]
        )
        == 1
    )
    assert not (tmp_path / "n.csv").exists()


def test_stack_labels_with_flows_of_another_stack_are_one_clear_error(tmp_path, capsys):
    lab = np.zeros((3, 10, 14), np.int32)
    lab[1, 2:6, 3:8] = 1
    write_labels(tmp_path / "lab.tif", lab)
    write_tiff(tmp_path / "img.tif", np.ones((3, 1, 10, 14), np.uint8), axes="ZCYX")
    write_flows(
        tmp_path / "f.tif", np.zeros((4, 4, 10, 14), np.float32), stack_axes="Z", three_d=True
    )  # 4 planes, not 3
    out = tmp_path / "t.csv"
    assert (
        main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(out), "--flows", str(tmp_path / "f.tif")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "f.tif: found flows of shape (4, 4, 10, 14) (3d)" in err and "(3, 10, 14)" in err
    )
    assert not out.exists()
    write_flows(tmp_path / "f.tif", np.zeros((3, 3, 10, 14), np.float32), stack_axes="Z")  # per plane, matching
    assert (
        main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(out), "--flows", str(tmp_path / "f.tif")]) == 0
    )
