"""The Snakemake workflow end to end, and the small modules only it uses (overlay, aggregate, provenance).

Workflow tests (marker ``workflow``) run the real Snakefile with the local profile on tiny synthetic
images and a tiny random-weights model: they check the plumbing (every output, logs, benchmarks,
temporary files, provenance), that a bad input fails only its own jobs with a one-line reason, and
that a run killed with SIGKILL and run again gives the outputs of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
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

from cpsnake import aggregate, overlay, provenance
from cpsnake.errors import CpsnakeError

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

    from cpsnake.io import write_labels

    tifffile.imwrite(tmp_path / "img.tif", np.random.default_rng(0).integers(0, 4000, (20, 30), dtype=np.uint16))
    labels = np.zeros((20, 30), np.int32)
    labels[5:12, 5:15] = 1
    write_labels(tmp_path / "lab.tif", labels, pixel_size=None, unit=None)
    assert overlay.main([str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), str(tmp_path / "o.png")]) == 0
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (30, 20) and im.mode == "RGB"
    write_labels(tmp_path / "small.tif", labels[:10], pixel_size=None, unit=None)
    assert overlay.main([str(tmp_path / "img.tif"), str(tmp_path / "small.tif"), str(tmp_path / "p.png")]) == 1
    assert not (tmp_path / "p.png").exists()


# --- aggregate -------------------------------------------------------------------------------------


def test_equivalent_diameters_2d_and_3d():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:2] = 1  # area 4
    labels[5:10, 5:10] = 3  # area 25 (label 2 absent)
    assert np.allclose(aggregate.equivalent_diameters(labels), [2 * math.sqrt(4 / math.pi), 2 * math.sqrt(25 / math.pi)])
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


def test_aggregate_cli_tables(tmp_path):
    from cpsnake.io import write_labels

    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5] = 1
    labels[6:10, 6:11] = 2
    write_labels(tmp_path / "A.tif", labels, pixel_size=(0.25, 0.25), unit="um")
    write_labels(tmp_path / "B.tif", np.zeros((12, 12), np.int32), pixel_size=None, unit=None)
    pd.DataFrame({"label": [1, 2], "area": [16, 20]}).to_csv(tmp_path / "A.csv", index=False)
    pd.DataFrame(columns=["label", "area"]).to_csv(tmp_path / "B.csv", index=False)
    (tmp_path / "infer").mkdir()
    (tmp_path / "reconstruct").mkdir()
    for rule, seconds in (("infer", 2.5), ("reconstruct", 0.25)):
        (tmp_path / rule / "A.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:02\t100\n")
    argv = ["--measurements", str(tmp_path / "A.csv"), str(tmp_path / "B.csv")]
    argv += ["--masks", str(tmp_path / "A.tif"), str(tmp_path / "B.tif")]
    argv += ["--benchmarks", str(tmp_path / "infer" / "A.tsv"), str(tmp_path / "reconstruct" / "A.tsv")]
    argv += ["--out-measurements", str(tmp_path / "m.csv"), "--out-summary", str(tmp_path / "s.csv")]
    assert aggregate.main(argv) == 0
    m = pd.read_csv(tmp_path / "m.csv")
    assert list(m.columns) == ["image", "label", "area"] and list(m["image"]) == ["A", "A"]
    s = pd.read_csv(tmp_path / "s.csv")
    assert list(s.columns) == aggregate.SUMMARY_COLUMNS
    assert list(s["image"]) == ["A", "B"] and list(s["cells"]) == [2, 0]
    d = np.median([2 * math.sqrt(16 / math.pi), 2 * math.sqrt(20 / math.pi)])
    assert s.loc[0, "median_diameter_px"] == pytest.approx(d, abs=1e-4)
    assert s.loc[0, "median_diameter"] == pytest.approx(0.25 * d, abs=1e-4)
    assert s.loc[0, "time_s"] == pytest.approx(2.75) and math.isnan(s.loc[1, "time_s"])
    assert math.isnan(s.loc[1, "median_diameter_px"])


def test_aggregate_cli_rejects_unmatched_images(tmp_path, capsys):
    pd.DataFrame({"label": [1]}).to_csv(tmp_path / "A.csv", index=False)
    argv = ["--measurements", str(tmp_path / "A.csv"), "--masks", str(tmp_path / "Z.tif")]
    argv += ["--out-measurements", str(tmp_path / "m.csv"), "--out-summary", str(tmp_path / "s.csv")]
    assert aggregate.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cpsnake aggregate: error:") and "\n" not in err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "s.csv").exists()


# --- provenance ------------------------------------------------------------------------------------


def test_provenance_record(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    img = tmp_path / "x.tif"
    img.write_bytes(b"pixels")
    norm = tmp_path / "x.json"
    norm.write_text(json.dumps({"per_channel": [{"low": 1.0, "high": 9.0}]}))
    argv = [str(tmp_path / "p.json"), "--model", str(model), "--model-name", "m", "--config-json", '{"diameter": 17}']
    argv += ["--snakemake-version", "9.0", "--images", str(img), "--normalization", str(norm)]
    assert provenance.main(argv) == 0
    rec = json.loads((tmp_path / "p.json").read_text())
    assert rec["model"]["sha256"] == hashlib.sha256(b"weights").hexdigest() and rec["model"]["bytes"] == 7
    assert rec["parameters"] == {"diameter": 17}
    assert rec["images"] == [
        {"name": "x", "path": str(img), "sha256": hashlib.sha256(b"pixels").hexdigest(),
         "normalization": {"per_channel": [{"low": 1.0, "high": 9.0}]}}
    ]
    assert rec["packages"]["snakemake"] == "9.0" and rec["packages"]["numpy"] == np.__version__
    assert "torch" in rec["packages"] and rec["packages"]["cpsnake"]


def test_provenance_rejects_unpaired_normalization(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"w")
    argv = [str(tmp_path / "p.json"), "--model", str(model), "--model-name", "m", "--images", str(model)]
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
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"),
        "--workflow-profile", str(ROOT / "workflow" / "profiles" / "local"),
        "--cores", "2",
        *extra,
    ]


def run_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(workdir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(workdir, *extra), env=run_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def outputs_of(workdir: Path, names=GOOD) -> list[Path]:
    res = workdir / "results"
    files = [res / kind / f"{n}.{ext}" for n in names for kind, ext in PER_IMAGE.items()]
    return files + [res / "measurements.csv", res / "summary.csv", res / "provenance.json"]


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
        rec["parameters"]["images"] = "-"
        return rec
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model) -> Path:
    """One uninterrupted run of the good images."""
    workdir = make_run_dir(tmp_path_factory.mktemp("reference"), tiny_model)
    snakemake(workdir)
    return workdir


@pytest.mark.workflow
def test_run_writes_every_output(reference_run, tiny_model):
    res = reference_run / "results"
    for path in outputs_of(reference_run):
        assert path.is_file(), path
    for rule in ("normalize", "infer", "reconstruct", "rois", "measure", "overlay"):
        assert len(list((res / "logs" / rule).glob("*.log"))) == len(GOOD), rule
    for rule in ("normalize", "infer", "reconstruct"):
        assert len(list((res / "benchmarks" / rule).glob("*.tsv"))) == len(GOOD), rule
    # intermediates are temporary by default; the normalization values stay
    assert not list((res / "flows").glob("*.tif")) and not list((res / "normalized").glob("*.tif"))
    assert len(list((res / "normalized").glob("*.json"))) == len(GOOD)

    summary = pd.read_csv(res / "summary.csv")
    assert list(summary["image"]) == sorted(GOOD)
    assert (summary["time_s"] > 0).all()
    from cpsnake.io import read_labels

    for name, cells in zip(summary["image"], summary["cells"]):
        labels, _ = read_labels(res / "masks" / f"{name}.tif")
        assert cells == len(np.unique(labels[labels > 0]))
        assert len(pd.read_csv(res / "measurements" / f"{name}.csv")) == cells
    assert summary["cells"].sum() > 0, "no cells at all: the tables below would test nothing"
    table = pd.read_csv(res / "measurements.csv")
    assert table.columns[0] == "image" and len(table) == summary["cells"].sum()

    rec = json.loads((res / "provenance.json").read_text())
    assert rec["model"]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert rec["parameters"]["reconstruct"]["min_size"] == 15  # schema defaults filled in
    assert [e["name"] for e in rec["images"]] == sorted(GOOD)
    assert all(e["normalization"]["per_channel"] for e in rec["images"])


@pytest.mark.workflow
def test_report_shows_overlays_and_summary(reference_run):
    report = reference_run / "report.html"
    snakemake(reference_run, "--report", str(report))
    html = report.read_text()
    for name in GOOD:
        assert f"overlays/{name}.png" in html, name
    assert "summary.csv" in html and "Overlays" in html


@pytest.mark.workflow
def test_keep_config_keeps_intermediates(tmp_path, tiny_model):
    workdir = make_run_dir(tmp_path, tiny_model, keep={"flows": True, "normalized": True})
    snakemake(workdir, "--until", "reconstruct")
    res = workdir / "results"
    assert len(list((res / "flows").glob("*.tif"))) == len(GOOD)
    assert len(list((res / "normalized").glob("*.tif"))) == len(GOOD)


def write_bad_images(folder: Path) -> dict[str, str]:
    """Four bad inputs; returns name -> the rule expected to fail on it."""
    good = folder / f"{GOOD[0]}.tif"
    data = good.read_bytes()
    (folder / "bad_truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "bad_text.tif").write_text("this is not an image\n")
    tifffile.imwrite(folder / "bad_zeros.tif", np.zeros((40, 40), np.uint16))
    tifffile.imwrite(folder / "bad_5d.tif", np.ones((2, 2, 2, 16, 16), np.uint8))
    return {"bad_truncated": "normalize", "bad_text": "normalize", "bad_zeros": "normalize", "bad_5d": "normalize"}


@pytest.mark.workflow
def test_bad_files_fail_only_their_own_jobs(tmp_path, tiny_model, reference_run):
    workdir = make_run_dir(tmp_path, tiny_model)
    bad = write_bad_images(workdir / "images")
    proc = snakemake(workdir, "--keep-going", check=False)
    assert proc.returncode != 0
    res = workdir / "results"
    for path in outputs_of(workdir)[:-3]:  # every good image is finished ...
        assert path.is_file(), path
        assert comparable(path) == comparable(reference_run / path.relative_to(workdir))
    for name, rule in bad.items():  # ... and each bad one failed with one line in its log
        assert not (res / "masks" / f"{name}.tif").exists()
        assert not list(res.glob(f"**/{name}.tif")), "a partial output was left under a final name"
        lines = (res / "logs" / rule / f"{name}.log").read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cpsnake {rule}: error: "), (name, lines)
        assert name in lines[0]
    assert not (res / "summary.csv").exists()  # the run-level tables wait for every image

    # removing the bad files lets the same command finish the run without redoing the good images
    for name in bad:
        (workdir / "images" / f"{name}.tif").unlink()
    before = {p: p.stat().st_mtime_ns for p in outputs_of(workdir)[:-3]}
    snakemake(workdir)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    for path in outputs_of(workdir):
        assert comparable(path) == comparable(reference_run / path.relative_to(workdir)), path


@pytest.mark.workflow
def test_kill_9_and_rerun_gives_the_uninterrupted_outputs(tmp_path, tiny_model, reference_run):
    workdir = make_run_dir(tmp_path, tiny_model)
    res = workdir / "results"
    proc = subprocess.Popen(
        snakemake_cmd(workdir), env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
