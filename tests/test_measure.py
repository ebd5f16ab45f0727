"""Per-cell table with ImageJ's definitions (the ImageJ oracle comparison is in test_imagej.py)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from cpsnake import io
from cpsnake.measure import columns, fit_ellipse, main, measure_labels, traced_perimeter


def _rect():
    lab = np.zeros((10, 14), np.int32)
    lab[2:8, 2:12] = 1
    return lab


def test_rectangle_area_perimeter_feret():
    (row,) = measure_labels(_rect(), np.ones((1, 10, 14)))
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
    (row,) = measure_labels(lab, img)
    assert row["Mean_c1"] == 2.0 and row["StdDev_c1"] == 0.0 and row["RawIntDen_c1"] == 120.0
    vals = img[1][lab == 1]
    assert row["Mean_c2"] == pytest.approx(vals.mean()) and row["StdDev_c2"] == pytest.approx(vals.std(ddof=1))
    assert row["Min_c2"] == vals.min() and row["Max_c2"] == vals.max()
    assert set(row) == set(columns(2))


def test_calibrated_lengths_and_areas():
    (row,) = measure_labels(_rect(), np.ones((1, 10, 14)), pixel_size=(0.5, 0.5))
    assert row["Area"] == 15.0 and row["area_px"] == 60
    assert row["Feret"] == pytest.approx(0.5 * math.hypot(10, 6))
    assert row["Width"] == 5.0


def test_cli_writes_header_and_rows(tmp_path):
    io.write_labels(tmp_path / "lab.tif", _rect(), pixel_size=(0.5, 0.5), unit="um")
    io.write_tiff(tmp_path / "img.tif", np.ones((2, 10, 14), np.uint16), axes="CYX", pixel_size=(0.5, 0.5), unit="um")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert list(rows[0]) == columns(2)
    assert rows[0]["image"] == "img.tif" and float(rows[0]["Area"]) == 15.0


def test_empty_labels_give_header_only(tmp_path):
    io.write_labels(tmp_path / "lab.tif", np.zeros((6, 6), np.int32))
    io.write_tiff(tmp_path / "img.tif", np.ones((1, 6, 6), np.uint8), axes="CYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines == [",".join(columns(1))]


def test_stack_rows_per_label_and_slice(tmp_path):
    lab = np.stack([_rect(), np.zeros((10, 14), np.int32), _rect() * 2])
    io.write_labels(tmp_path / "lab.tif", lab)
    io.write_tiff(tmp_path / "img.tif", np.ones((3, 1, 10, 14), np.uint8), axes="ZCYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [(r["label"], r["slice"]) for r in rows] == [("1", "1"), ("2", "3")]


def test_shape_mismatch_is_one_clear_error(tmp_path, capsys):
    io.write_labels(tmp_path / "lab.tif", _rect())
    io.write_tiff(tmp_path / "img.tif", np.ones((1, 5, 5), np.uint8), axes="CYX")
    assert main([str(tmp_path / "lab.tif"), str(tmp_path / "img.tif"), str(tmp_path / "t.csv")]) == 1
    err = capsys.readouterr().err
    assert "img.tif" in err and "expected" in err and not (tmp_path / "t.csv").exists()
