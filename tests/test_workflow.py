"""The Snakemake workflow end to end, and the small modules only it uses (overlay, aggregate, provenance).

Workflow tests (marker ``workflow``) run the real Snakefile with the local profile on tiny synthetic
images and a tiny random-weights model, with cpsnake off PATH (the rules call the environment's own
Python): they check the plumbing (every output, one job per batch and step, logs, benchmarks, temporary
files, provenance, the report), that batches give the same outputs as one image per job, that a bad
input fails alone inside its batch while the run tables are written, that a new image reruns only its
batch, sample sheets with per-image options and an output folder of its own, and that a run killed with
SIGKILL and run again gives the outputs of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cpsnake.export import overlay
from cpsnake.run import aggregate, provenance
from cpsnake.steps import overlay as overlay_step

ROOT = Path(__file__).resolve().parents[1]
GOOD = ("blobs_a", "blobs_b", "blobs_c")
PER_IMAGE = {"masks": "tif", "rois": "zip", "measurements": "csv", "overlays": "png"}


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


# --- aggregate -------------------------------------------------------------------------------------


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


def fake_run(root: Path) -> Path:
    """A results folder as a run leaves it: samples.tsv, one batch's manifests and per-image files.

    A: segmented (2 cells, calibrated); B: segmented, no cells; C: unreadable (failed at samples);
    D: failed at normalize (so skipped by every later step).
    """
    from cpsnake.io.labels import write_labels
    from cpsnake.run import batch, samples
    from cpsnake.run.layout import Paths

    res = root / "results"
    rows = [samples.Sample(n, f"/data/{n}.tif", batch="b0001", pixels=144) for n in ("A", "B", "D")]
    rows.append(samples.Sample("C", "/data/C.tif", status="failed", reason="/data/C.tif: not an image"))
    samples.write_table(res / "samples.tsv", rows)
    paths = Paths(res, "b0001")
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5] = 1
    labels[6:10, 6:11] = 2
    write_labels(paths.masks("A"), labels, pixel_size=(0.25, 0.25), unit="um")
    write_labels(paths.masks("B"), np.zeros((12, 12), np.int32), pixel_size=None, unit=None)
    paths.measurements("A").parent.mkdir(parents=True)
    pd.DataFrame({"label": [1, 2], "area": [16, 20]}).to_csv(paths.measurements("A"), index=False)
    pd.DataFrame(columns=["label", "area"]).to_csv(paths.measurements("B"), index=False)
    secs = {"infer": 2.5, "reconstruct": 0.25}
    for step in batch.STEPS:
        out = [
            batch.Outcome("A", "ok", "", secs.get(step, 0.1), {"normalization": {"per_channel": [1]}}),
            batch.Outcome("B", "ok", "", 0.0),
        ]
        if step == "normalize":
            out.append(batch.Outcome("D", "failed", "/data/D.tif: found a constant image"))
        else:
            out.append(batch.Outcome("D", "skipped", "normalize failed"))
        batch.write_manifest(paths.manifest(step), out)
    return res


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


# --- provenance ------------------------------------------------------------------------------------


def test_provenance_record(tmp_path):
    res = fake_run(tmp_path)
    from cpsnake.models.state import save_model
    from cpsnake.models.unet import build_unet

    model = tmp_path / "m.pt"
    save_model(build_unet(nbase=(2, 8, 16)), model)
    table = res / "samples.tsv"
    text = table.read_text()
    for name in ("A", "B", "C", "D"):  # real files to hash
        (tmp_path / f"{name}.tif").write_bytes(name.encode())
        text = text.replace(f"/data/{name}.tif", str(tmp_path / f"{name}.tif"))
    table.write_text(text)
    argv = [
        str(tmp_path / "p.json"),
        "--model",
        str(model),
        "--model-name",
        "m",
        "--config-json",
        '{"diameter": 17}',
        "--snakemake-version",
        "9.0",
        "--samples",
        str(table),
        "--results",
        str(res),
    ]
    assert provenance.main(argv) == 0
    rec = json.loads((tmp_path / "p.json").read_text())
    assert rec["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert rec["model"]["bytes"] == model.stat().st_size and rec["model"]["family"] == "unet"
    assert rec["parameters"] == {"diameter": 17}
    assert [e["name"] for e in rec["images"]] == ["A", "B"]  # the normalized images
    assert rec["images"][0]["sha256"] == hashlib.sha256(b"A").hexdigest()
    assert rec["images"][0]["normalization"] == {"per_channel": [1]}
    assert [(f["image"], f["step"]) for f in rec["failed"]] == [("C", "samples"), ("D", "normalize")]
    assert rec["packages"]["snakemake"] == "9.0" and rec["packages"]["numpy"] == np.__version__
    assert "torch" in rec["packages"] and rec["packages"]["cpsnake"]


def test_provenance_refuses_bad_config_json(tmp_path):
    res = fake_run(tmp_path)
    model = tmp_path / "m.pt"
    model.write_bytes(b"w")
    argv = [
        str(tmp_path / "p.json"),
        "--model",
        str(model),
        "--model-name",
        "m",
        "--config-json",
        "{nope",
        "--samples",
        str(res / "samples.tsv"),
        "--results",
        str(res),
    ]
    assert provenance.main(argv) == 1
    assert not (tmp_path / "p.json").exists()


# --- the workflow ----------------------------------------------------------------------------------


def blobs(seed: int, shape=(72, 88), n=6, dtype=np.uint16) -> np.ndarray:
    """A grey (Y, X) image of ``n`` bright Gaussian blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(100, 5, shape)
    for cy, cx in rng.uniform(10, np.array(shape) - 10, (n, 2)):
        img += 900 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)


def write_good_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        dtype = np.uint8 if i % 2 else np.uint16
        img = blobs(i, dtype=dtype) if dtype == np.uint16 else (blobs(i) // 8).astype(np.uint8)
        tifffile.imwrite(folder / f"{name}.tif", img)


# The tiny random model finds nothing with the default thresholds; without the flow-error check and
# with a lower cell-probability threshold it finds some (nonsense) cells, which exercises the tables.
FIND_CELLS = {"reconstruct": {"flow_threshold": 0.0, "cellprob_threshold": -0.5}}


def make_run_dir(root: Path, model: Path, **config) -> Path:
    write_good_images(root / "images")
    cfg = {"images": str(root / "images"), "model": str(model), **FIND_CELLS, **config}
    (root / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return root


def snakemake_cmd(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / "local"),
        "--cores",
        "2",
        *extra,
    ]


def run_env() -> dict:
    """The environment of a user who has not activated the venv: cpsnake is not on PATH.

    The rules call the Python that runs Snakemake (`python -m cpsnake`), so they must work without it.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PATH"] = (
        os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "cpsnake").exists())
        or "/usr/bin:/bin"
    )
    return env


def snakemake(workdir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(workdir, *extra), env=run_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def jobs_run(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> jobs Snakemake ran (its "rule NAME:" headers; the DAG grows after the checkpoint, so its
    first 'Job stats' table is incomplete), without the target rule `all`."""
    import re
    from collections import Counter

    heads = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", proc.stdout + proc.stderr, flags=re.M)
    counts = Counter(heads)
    counts.pop("all", None)
    return dict(counts)


def outputs_of(workdir: Path, names=GOOD, results: str = "results") -> list[Path]:
    res = workdir / results
    files = [res / kind / f"{n}.{ext}" for n in names for kind, ext in PER_IMAGE.items()]
    return files + [res / "measurements.csv", res / "summary.csv", res / "failed.csv", res / "provenance.json"]


def comparable(path: Path):
    """File content as compared between runs: ZIP members, summary without times, provenance without date."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            return [(i.filename, zf.read(i)) for i in zf.infolist()]
    if path.name == "summary.csv":
        return pd.read_csv(path).drop(columns=["time_s"]).to_csv(index=False)
    if path.name == "provenance.json":
        rec = json.loads(path.read_text())
        rec.pop("created")
        for entry in rec["images"]:  # absolute paths differ between run folders
            entry["path"] = Path(entry["path"]).name
            entry["normalization"]["source"]["path"] = Path(entry["normalization"]["source"]["path"]).name
            entry["normalization"]["output"]["path"] = Path(entry["normalization"]["output"]["path"]).name
        rec["parameters"]["images"] = "-"
        rec["parameters"]["batch"] = "-"
        return rec
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model) -> Path:
    """One uninterrupted run of the good images (one batch)."""
    workdir = make_run_dir(tmp_path_factory.mktemp("reference"), tiny_model)
    proc = snakemake(workdir)
    (workdir / "jobs.json").write_text(json.dumps(jobs_run(proc)))
    return workdir


@pytest.mark.workflow
def test_run_writes_every_output(reference_run, tiny_model):
    res = reference_run / "results"
    for path in outputs_of(reference_run):
        assert path.is_file(), path
    # one job per batch and step: 3 small images are one batch
    steps = ("normalize", "infer", "reconstruct", "rois", "measure", "overlay")
    assert json.loads((reference_run / "jobs.json").read_text()) == {
        "samples": 1,
        **{step: 1 for step in steps},
        "aggregate": 1,
        "provenance": 1,
        "check": 1,
    }
    for step in steps:
        assert [p.name for p in (res / "logs" / step).glob("*.log")] == ["b0001.log"], step
    for step in ("normalize", "infer", "reconstruct"):
        assert [p.name for p in (res / "benchmarks" / step).glob("*.tsv")] == ["b0001.tsv"], step
    # intermediates are temporary by default; the normalization values are in the provenance record
    assert not (res / "work" / "b0001" / "flows").exists() and not (res / "work" / "b0001" / "normalized").exists()
    assert (res / "failed.csv").read_text() == "image,step,reason\n"

    summary = pd.read_csv(res / "summary.csv")
    assert list(summary["image"]) == sorted(GOOD)
    assert (summary["time_s"] > 0).all()
    from cpsnake.io.labels import read_labels

    for name, cells in zip(summary["image"], summary["cells"]):
        labels, _ = read_labels(res / "masks" / f"{name}.tif")
        assert cells == len(np.unique(labels[labels > 0]))
        table = pd.read_csv(res / "measurements" / f"{name}.csv")
        assert len(table) == cells and {"flow_error", "cellprob"} <= set(table.columns)
    assert summary["cells"].sum() > 0, "no cells at all: the tables below would test nothing"
    table = pd.read_csv(res / "measurements.csv")
    assert table.columns[0] == "image" and len(table) == summary["cells"].sum()

    rec = json.loads((res / "provenance.json").read_text())
    assert rec["model"]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert rec["parameters"]["reconstruct"]["min_size"] == 15  # schema defaults filled in
    assert [e["name"] for e in rec["images"]] == sorted(GOOD)
    assert all(e["normalization"]["per_channel"] for e in rec["images"]) and rec["failed"] == []


@pytest.mark.workflow
def test_one_image_per_batch_gives_the_same_outputs(tmp_path, tiny_model, reference_run):
    """Batches change how the work is cut into jobs, not the results (pooled tiles included)."""
    workdir = make_run_dir(tmp_path, tiny_model, batch={"images": 1})
    proc = snakemake(workdir)
    assert jobs_run(proc)["infer"] == 3 and len(list((workdir / "results" / "work").glob("b*"))) == 3
    for path in outputs_of(workdir):
        assert comparable(path) == comparable(reference_run / path.relative_to(workdir)), path


@pytest.mark.workflow
def test_report_shows_overlays_and_summary(reference_run):
    report = reference_run / "report.html"
    snakemake(reference_run, "--report", str(report))
    html = report.read_text()
    for name in GOOD:
        assert f"overlays/{name}.png" in html, name
    assert "summary.csv" in html and "Overlays" in html


@pytest.mark.workflow
def test_keep_config_keeps_intermediates_geojson_and_ome_zarr_are_written(tmp_path, tiny_model):
    """keep: the intermediates stay; geojson: true writes each image's GeoJSON, the same bytes as
    `cpsnake geojson MASKS OUT --table MEASUREMENTS` (the measure step writes it from its own rows);
    ome_zarr: true writes each image's labels as OME-Zarr, equal to its label TIFF."""
    import zarr

    from cpsnake.steps.geojson import main as geojson_main

    workdir = make_run_dir(tmp_path, tiny_model, keep={"flows": True, "normalized": True}, geojson=True, ome_zarr=True)
    snakemake(workdir)
    res = workdir / "results"
    work = res / "work" / "b0001"
    assert len(list((work / "flows").glob("*.tif"))) == len(GOOD)
    assert len(list((work / "normalized").glob("*.tif"))) == len(GOOD)
    for name in GOOD:
        mine = tmp_path / f"{name}.geojson"
        assert (
            geojson_main(
                [str(res / "masks" / f"{name}.tif"), str(mine), "--table", str(res / "measurements" / f"{name}.csv")]
            )
            == 0
        )
        fc = json.loads((res / "geojson" / f"{name}.geojson").read_text())
        assert len(fc["features"]) == len(pd.read_csv(res / "measurements" / f"{name}.csv")) > 0
        assert json.loads(mine.read_text()) == fc
        cells = zarr.open_array(str(res / "masks" / f"{name}.zarr" / "labels" / "cells" / "0"), mode="r")
        assert np.array_equal(cells[:], tifffile.imread(res / "masks" / f"{name}.tif"))


def write_bad_images(folder: Path) -> dict[str, str]:
    """Five bad inputs; returns name -> the step expected to fail on it."""
    good = folder / f"{GOOD[0]}.tif"
    data = good.read_bytes()
    (folder / "bad_truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "bad_text.tif").write_text("this is not an image\n")
    tifffile.imwrite(folder / "bad_zeros.tif", np.zeros((40, 40), np.uint16))
    tifffile.imwrite(folder / "bad_5d.tif", np.ones((2, 2, 2, 16, 16), np.uint8))
    nan = blobs(7).astype(np.float32)
    nan[3, 3] = np.nan
    tifffile.imwrite(folder / "bad_nan.tif", nan)
    return {
        "bad_truncated": "normalize",
        "bad_text": "samples",
        "bad_zeros": "normalize",
        "bad_5d": "normalize",
        "bad_nan": "normalize",
    }


@pytest.mark.workflow
def test_bad_files_fail_alone_and_the_run_tables_are_written(tmp_path, tiny_model, reference_run):
    workdir = make_run_dir(tmp_path, tiny_model)
    bad = write_bad_images(workdir / "images")
    proc = snakemake(workdir, check=False)
    assert proc.returncode != 0  # the run says that something failed ...
    assert "5 image(s) failed" in proc.stdout + proc.stderr
    res = workdir / "results"
    assert len(list((res / "work").glob("b*"))) == 1  # ... though the bad images shared the good ones' batch
    for path in outputs_of(workdir):  # ... every good image is finished and every table written for them
        assert path.is_file(), path
        if path.name not in ("provenance.json", "failed.csv"):
            assert comparable(path) == comparable(reference_run / path.relative_to(workdir)), path
    failed = pd.read_csv(res / "failed.csv")
    assert dict(zip(failed["image"], failed["step"])) == bad
    rec = json.loads((res / "provenance.json").read_text())
    assert [e["name"] for e in rec["images"]] == sorted(GOOD)
    assert sorted(f["image"] for f in rec["failed"]) == sorted(bad)
    for name, step in bad.items():  # each bad one failed with one line in a log named after it
        assert not list(res.glob(f"*/{name}.*")), "an output was left under a final name"
        lines = (res / "logs" / "images" / f"{name}.log").read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cpsnake {step}: error: "), (name, lines)
        assert name in lines[0]
        assert failed.set_index("image").loc[name, "reason"] in lines[0]

    # removing the bad files lets the same command finish the run, with the reference's outputs
    for name in bad:
        (workdir / "images" / f"{name}.tif").unlink()
    snakemake(workdir)
    for path in outputs_of(workdir):
        assert comparable(path) == comparable(reference_run / path.relative_to(workdir)), path


@pytest.mark.workflow
def test_a_new_image_reruns_only_its_batch(tmp_path, tiny_model):
    workdir = make_run_dir(tmp_path, tiny_model, batch={"images": 2})
    snakemake(workdir)
    res = workdir / "results"
    first = [res / kind / f"{n}.{ext}" for n in GOOD[:2] for kind, ext in PER_IMAGE.items()]
    before = {p: p.stat().st_mtime_ns for p in first}
    tifffile.imwrite(workdir / "images" / "blobs_z.tif", blobs(9))  # sorts last: joins the second batch
    proc = snakemake(workdir)
    jobs = jobs_run(proc)
    assert jobs["samples"] == 1 and jobs["infer"] == 1, jobs  # b0002 only
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert list(pd.read_csv(res / "summary.csv")["image"]) == [*GOOD, "blobs_z"]


@pytest.mark.workflow
def test_sample_sheet_results_folder_and_channels(tmp_path, tiny_model):
    """A sheet with per-image channels and diameter over a folder of grey and 3-channel images, an output
    folder of its own, channels given on the command line as a string, and no cpsnake on PATH."""
    workdir = make_run_dir(tmp_path, tiny_model)
    img = blobs(3)
    rgb = np.stack([img // 2, img, np.zeros_like(img)])  # the nuclei are in channel 1
    tifffile.imwrite(workdir / "images" / "three.tif", rgb, imagej=True, metadata={"axes": "CYX"})
    sheet = workdir / "samples.tsv"
    sheet.write_text(
        "sample\tpath\tchannels\tdiameter\n"
        "grey_a\timages/blobs_a.tif\t\t\n"
        "grey_b\timages/blobs_b.tif\t\t20\n"
        "colour\timages/three.tif\t1\t\n"
    )
    snakemake(workdir, "--config", f"samples={sheet}", "results=out/set1", "channels=0")
    res = workdir / "out" / "set1"
    rec = json.loads((res / "provenance.json").read_text())
    assert [e["name"] for e in rec["images"]] == ["colour", "grey_a", "grey_b"]
    chans = {e["name"]: e["normalization"]["channels"] for e in rec["images"]}
    assert chans == {"colour": [1], "grey_a": [0], "grey_b": [0]}
    assert rec["images"][2]["options"]["diameter"] == 20
    assert list(pd.read_csv(res / "summary.csv")["image"]) == ["colour", "grey_a", "grey_b"]
    assert not (workdir / "results").exists()
    # the sheet's channel choice equals `cpsnake segment --channels 1` on that image
    from cpsnake import cli

    seg = tmp_path / "seg"
    argv = [
        "segment",
        str(workdir / "images" / "three.tif"),
        "--out",
        str(seg),
        "--model",
        str(tiny_model),
        "--channels",
        "1",
        "--flow-threshold",
        "0",
        "--cellprob-threshold",
        "-0.5",
    ]
    assert cli.main(argv) == 0
    assert (seg / "masks" / "three.tif").read_bytes() == (res / "masks" / "colour.tif").read_bytes()


@pytest.mark.workflow
def test_kill_9_and_rerun_gives_the_uninterrupted_outputs(tmp_path, tiny_model, reference_run):
    workdir = make_run_dir(tmp_path, tiny_model)
    res = workdir / "results"
    proc = subprocess.Popen(
        snakemake_cmd(workdir),
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not list((res / "masks").glob("*.tif")):  # the middle: the first mask exists
            assert proc.poll() is None, "snakemake ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the jobs it runs, as a crash would
        proc.wait()
    assert not all(p.is_file() for p in outputs_of(workdir)), "killed too late to test anything"

    snakemake(workdir, "--unlock")
    snakemake(workdir)
    for path in outputs_of(workdir):
        assert comparable(path) == comparable(reference_run / path.relative_to(workdir)), path


@pytest.mark.workflow
def test_bad_config_is_refused_before_any_job(tmp_path, tiny_model):
    workdir = make_run_dir(tmp_path, tiny_model, reconstruct={"flow_threshold": "high"})
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0 and "flow_threshold" in proc.stdout + proc.stderr
    workdir2 = make_run_dir(tmp_path / "empty", tiny_model)
    shutil.rmtree(workdir2 / "images")
    (workdir2 / "images").mkdir()
    proc = snakemake(workdir2, "-n", check=False)
    assert proc.returncode != 0 and "found no image files" in proc.stdout + proc.stderr
    # values given on the command line as Snakemake passes them (strings inside lists and mappings)
    for good in (["channels=[0,1]"], ["channels=0,2"], ["channels=1"], ["batch={images: 3, pixels: 1000}"]):
        proc = snakemake(make_run_dir(tmp_path / "cli", tiny_model), "-n", "--config", *good, check=False)
        assert proc.returncode == 0, (good, proc.stderr[-2000:])
    proc = snakemake(make_run_dir(tmp_path / "cli", tiny_model), "-n", "--config", "channels=a,b", check=False)
    assert proc.returncode != 0 and "channels" in proc.stdout + proc.stderr
    sheet = workdir2 / "s.tsv"
    sheet.write_text("sample\tpath\tcolour\na\tx.tif\tred\n")
    proc = snakemake(workdir2, "-n", "--config", f"samples={sheet}", check=False)
    assert proc.returncode != 0 and "colour" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_a_classic_unet_model_runs_through_the_workflow(tmp_path):
    """`model` may be a cellpose 1-3 U-Net file: recognised from its keys, no flag; provenance says so.
    With `diameter: auto` its size model (beside it) gives each image's diameter, recorded in provenance
    as the estimate `cpsnake.engine.size` makes (a bug that recorded the configured "auto" or dropped it fails)."""
    import torch

    from cpsnake.engine import size
    from cpsnake.engine.normalize import normalize
    from cpsnake.io.inputs import read_image
    from cpsnake.models.registry import load_model
    from cpsnake.models.unet import build_unet

    torch.manual_seed(0)
    unet = tmp_path / "my_cp3_model"  # cellpose model files often have no extension
    torch.save(build_unet(nbase=(2, 8, 16, 32)).state_dict(), unet)
    rng = np.random.default_rng(0)
    np.save(
        tmp_path / "size_my_cp3_model.npy",
        {"A": rng.normal(0, 0.5, 32), "smean": rng.normal(0, 0.05, 32), "ymean": np.float64(-0.1), "diam_mean": 30.0},
    )
    workdir = make_run_dir(tmp_path / "run", unet, diameter="auto")
    snakemake(workdir)
    res = workdir / "results"
    assert (res / "failed.csv").read_text() == "image,step,reason\n"
    assert all((res / "masks" / f"{n}.tif").is_file() for n in GOOD)
    record = json.loads((res / "provenance.json").read_text())
    assert record["model"]["family"] == "unet"
    net, params = load_model(unet), size.read_size_model(tmp_path / "size_my_cp3_model.npy")
    for image in record["images"]:
        img, _ = read_image(workdir / "images" / f"{image['name']}.tif")
        expected, _ = size.estimate_diameter(net, normalize(img)[0], params, progress=False)
        assert image["diameter_used"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.workflow
@pytest.mark.parametrize(
    "stacks",
    [{"stitch_threshold": 0.25, "track": True}, {"do_3d": True, "anisotropy": 2.0}],
    ids=["stitch-track", "3d"],
)
def test_stacks_run_through_the_workflow_as_segment_does(tmp_path, stacks):
    """A Z stack and a time series beside 2-D images: config `stacks` applies where it fits (Z stacks are
    stitched or done in 3-D, the movie tracked, 2-D images as always) and every file equals what
    `cpsnake segment` writes with the matching flags."""
    from cpsnake.run.segment import main as segment

    demo = tifffile.imread(ROOT / "resources" / "demo" / "stacks" / "nuclei_zstack.tif")  # real nuclei, synthetic in Z
    zstack = demo[3:8, :48, :48]
    workdir = make_run_dir(
        tmp_path / "run", ROOT / "resources" / "models" / "nuclei_small.pt", stacks=stacks, reconstruct={}
    )
    tifffile.imwrite(workdir / "images" / "zstack.tif", zstack, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    tifffile.imwrite(
        workdir / "images" / "movie.tif",
        np.stack([np.roll(zstack[2], 2 * t, 1) for t in range(3)]),
        imagej=True,
        metadata={"axes": "TYX", "finterval": 5.0},
    )
    snakemake(workdir)
    res = workdir / "results"
    assert (res / "failed.csv").read_text() == "image,step,reason\n"
    flags = ["--do-3d", "--anisotropy", "2.0"] if stacks.get("do_3d") else ["--stitch-threshold", "0.25"]
    for sample, extra in (("zstack", flags), ("movie", ["--track"] if stacks.get("track") else [])):
        out = tmp_path / f"seg_{sample}"
        assert segment([str(workdir / "images" / f"{sample}.tif"), "--out", str(out), *extra]) == 0
        for kind, ext in PER_IMAGE.items():
            ours, theirs = res / kind / f"{sample}.{ext}", out / kind / f"{sample}.{ext}"
            assert comparable(ours) == comparable(theirs), (sample, kind)
    masks = tifffile.imread(res / "masks" / "zstack.tif")
    assert masks.shape == (5, 48, 48) and masks.max() > 0


@pytest.mark.workflow
def test_large_images_run_as_block_jobs_with_the_one_process_labels(tmp_path):
    """config blocks.size 512: a 1024 x 1024 mosaic of real nuclei runs as 4 block jobs (the grid from its
    header) and a stitch, and its masks, ROIs and table equal `cpsnake segment --block-size 512`'s (whose
    labels equal the whole image's, tests/test_blocks.py) bit for bit. Each block job, and the reconstruct
    job that stitches the blocks, asks for the memory of a block (the same for any image size), and every
    job's peak stays within its request (cpsnake.run.jobmem). An OME-Zarr image in the
    folder goes the same way. A corrupt tiled TIFF in blocks fails alone, with its one line, at the
    streaming pass.

    Catches: block jobs reading another grid, pass 2 with a block's own diffusion length instead of the
    maximum over all blocks, values streamed differently from the one-process run, block files left from
    another grid accepted, a failed image failing the run, a request below what its job takes.
    """
    import re

    from test_blocks import nuclei_mosaic

    from cpsnake.run.segment import main as segment

    workdir = tmp_path / "run"
    (workdir / "images").mkdir(parents=True)
    tifffile.imwrite(workdir / "images" / "mosaic.tif", nuclei_mosaic(), tile=(256, 256), compression="zlib")
    tifffile.imwrite(workdir / "images" / "broken.tif", nuclei_mosaic(600), tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(workdir / "images" / "broken.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[7], tif.pages[0].databytecounts[7]
    raw = bytearray((workdir / "images" / "broken.tif").read_bytes())
    raw[offset : offset + count] = b"\xff" * count
    (workdir / "images" / "broken.tif").write_bytes(bytes(raw))
    from test_regions import write_ome_zarr

    from cpsnake.io.inputs import read_image

    demo = read_image(sorted((ROOT / "resources" / "demo" / "images").glob("bbbc039_*.tif"))[0])[0]
    write_ome_zarr(workdir / "images" / "demo.ome.zarr", demo, "0.4", chunks=(1, 200, 200))
    cfg = {
        "images": str(workdir / "images"),
        "model": str(ROOT / "resources" / "models" / "nuclei_small.pt"),
        "blocks": {"size": 512},
    }
    (workdir / "config.yaml").write_text(json.dumps(cfg))
    proc = snakemake(workdir, check=False)
    assert proc.returncode != 0 and "1 image(s) failed" in proc.stderr  # the check job, after every table
    assert jobs_run(proc)["block"] == 4 + 4 + 4  # 2 x 2 grids: the mosaic's, the OME-Zarr's, the broken image's
    res = workdir / "results"
    failed = (res / "failed.csv").read_text().splitlines()
    assert len(failed) == 2 and failed[1].startswith("broken,normalize,") and "cannot be decoded" in failed[1]
    out = tmp_path / "seg"
    assert segment([str(workdir / "images" / "mosaic.tif"), "--out", str(out), "--block-size", "512"]) == 0
    assert segment([str(workdir / "images" / "demo.ome.zarr"), "--out", str(out), "--block-size", "512"]) == 0
    for name in ("mosaic", "demo"):
        for kind, ext in PER_IMAGE.items():
            assert comparable(res / kind / f"{name}.{ext}") == comparable(out / kind / f"{name}.{ext}"), (name, kind)
    assert (
        tifffile.imread(res / "masks" / "mosaic.tif").max() > 500
        and tifffile.imread(res / "masks" / "demo.tif").max() > 30
    )
    text = proc.stdout + proc.stderr
    requests = {
        rule: {int(m) for m in re.findall(rf"rule {rule}:\n(?:    .*\n)*?    resources: .*?mem_mb=(\d+)", text)}
        for rule in ("block", "normalize", "infer", "reconstruct", "rois", "measure", "overlay")
    }
    # the block's, not the image's: a block job 1,500 MB + 100 bytes per pixel of the block and 300 px each
    # side; pass 2 and the stitch 1,000 MB + 70 bytes per pixel of the same; window by window 500 MB + 1 KB
    # per (assumed) object, one per 256 px of the image
    assert requests["block"] == {1500 + 100 * (512 + 600) ** 2 // 10**6}
    assert requests["reconstruct"] == {1000 + 70 * (512 + 600) ** 2 // 10**6}
    assert requests["measure"] == requests["rois"] == {int(500 + 1024 * 1024**2 / 256 / 1e6)}
    # every job's peak memory (the last line of its log) within its request
    peaks = {
        rule: [
            int(m)
            for f in (res / "logs" / rule).rglob("*.log")
            for m in re.findall(r"; peak memory (\d+) MB$", f.read_text(), re.M)
        ]
        for rule in requests
    }
    assert {rule: len(v) for rule, v in peaks.items()} == {"block": 12 - 4, **{r: 1 for r in requests if r != "block"}}
    for rule, values in peaks.items():
        assert max(values) <= min(requests[rule]), (rule, values, requests[rule])
    assert not list((res / "work").glob("*/blocks/*/*.npz"))  # intermediate (config keep.flows: false)


def test_a_slide_overlay_is_shown_every_kth_pixel():
    """Above MAX_SIDE the picture takes every k-th pixel of the image and of the labels (outlines of the
    subsampled labels, in their colours), so a slide's overlay stays viewable and bounded."""
    from cpsnake.export.overlay import render

    img = np.zeros((1, 100, 300), np.uint16)
    img[0, :, ::2] = 1000
    lab = np.zeros((100, 300), np.int32)
    lab[30:60, 30:90] = 7
    full = render(img, lab)
    small = render(img, lab, max_side=100)
    assert full.shape == (100, 300, 3) and small.shape == (34, 100, 3)
    assert np.array_equal(small, render(img[:, ::3, ::3], lab[::3, ::3]))
    assert (small == full[30, 30]).all(axis=2).sum() > 0  # label 7's outline colour is there
