"""Run-level tables from the per-image outputs (cpsnake.run.aggregate) and its command."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from workflow_run import fake_run

from cpsnake.run import aggregate


def test_equivalent_diameters_2d_and_3d():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:2] = 1  # area 4
    labels[5:10, 5:10] = 3  # area 25 (label 2 absent)
    assert np.allclose(
        aggregate.equivalent_diameters(labels), [2 * math.sqrt(4 / math.pi), 2 * math.sqrt(25 / math.pi)]
    )
    cube = np.zeros((3, 3, 3), np.int32)
    cube[:] = 1
    assert np.allclose(aggregate.equivalent_diameters(cube), [(6 * 27 / math.pi) ** (1 / 3)])


def test_summarize_mask_calibrated_and_empty():
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:4] = 1
    row = aggregate.summarize_mask(labels, (0.5, 0.5), "micron")
    assert row["cells"] == 1 and row["unit"] == "micron"
    assert row["median_diameter"] == pytest.approx(0.5 * row["median_diameter_px"])
    empty = aggregate.summarize_mask(np.zeros((4, 4), np.int32), (0.5, 0.5), "micron")
    assert empty["cells"] == 0 and math.isnan(empty["median_diameter_px"]) and math.isnan(empty["median_diameter"])


def test_concat_measurements_image_column_first_and_empty_case():
    a = pd.DataFrame({"label": [1, 2], "area": [10.0, 12.0]})
    b = pd.DataFrame(columns=["label", "area"])
    table = aggregate.concat_measurements([("A", a), ("B", b)])
    assert list(table.columns) == ["image", "label", "area"] and list(table["image"]) == ["A", "A"]
    none = aggregate.concat_measurements([("B", b)])
    assert list(none.columns) == ["image", "label", "area"] and len(none) == 0


def test_aggregate_cli_tables_from_manifests(tmp_path):
    res = fake_run(tmp_path)
    out = {k: tmp_path / f"{k}.csv" for k in ("m", "s", "f")}
    argv = [
        "--samples",
        str(res / "samples.tsv"),
        "--results",
        str(res),
        "--out-measurements",
        str(out["m"]),
        "--out-summary",
        str(out["s"]),
        "--out-failed",
        str(out["f"]),
    ]
    assert aggregate.main(argv) == 0
    m = pd.read_csv(out["m"])
    assert list(m.columns) == ["image", "label", "area"] and list(m["image"]) == ["A", "A"]
    s = pd.read_csv(out["s"])
    assert list(s.columns) == aggregate.SUMMARY_COLUMNS
    assert list(s["image"]) == ["A", "B"] and list(s["cells"]) == [2, 0]  # the failed images have no row
    d = np.median([2 * math.sqrt(16 / math.pi), 2 * math.sqrt(20 / math.pi)])
    assert s.loc[0, "median_diameter_px"] == pytest.approx(d, abs=1e-4)
    assert s.loc[0, "median_diameter"] == pytest.approx(0.25 * d, abs=1e-4)
    assert s.loc[0, "time_s"] == pytest.approx(2.75) and s.loc[1, "time_s"] == 0
    assert math.isnan(s.loc[1, "median_diameter_px"])
    f = pd.read_csv(out["f"])
    assert list(f.columns) == ["image", "step", "reason"]
    assert f.values.tolist() == [
        ["C", "samples", "/data/C.tif: not an image"],
        ["D", "normalize", "/data/D.tif: found a constant image"],
    ]


def test_aggregate_check_fails_the_run_only_when_an_image_failed(tmp_path, capsys):
    pd.DataFrame([["C", "samples", "C.tif: not an image"]], columns=["image", "step", "reason"]).to_csv(
        tmp_path / "f.csv", index=False
    )
    assert aggregate.main(["--check", str(tmp_path / "f.csv"), "--done", str(tmp_path / "done")]) == 1
    err = capsys.readouterr().err
    assert "C: failed at samples: C.tif: not an image" in err and "1 image(s) failed" in err
    assert not (tmp_path / "done").exists()
    pd.DataFrame(columns=["image", "step", "reason"]).to_csv(tmp_path / "g.csv", index=False)
    assert aggregate.main(["--check", str(tmp_path / "g.csv"), "--done", str(tmp_path / "done")]) == 0
    assert (tmp_path / "done").exists()


def test_aggregate_cli_missing_manifest_is_one_line(tmp_path, capsys):
    res = fake_run(tmp_path)
    (res / "work" / "b0001" / "measure.tsv").unlink()
    argv = [
        "--samples",
        str(res / "samples.tsv"),
        "--results",
        str(res),
        "--out-measurements",
        str(tmp_path / "m.csv"),
        "--out-summary",
        str(tmp_path / "s.csv"),
        "--out-failed",
        str(tmp_path / "f.csv"),
    ]
    assert aggregate.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cpsnake aggregate: error:") and "\n" not in err and "measure.tsv" in err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.csv").exists()
