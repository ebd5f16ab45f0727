"""Running the Snakemake workflow from the tests: a run folder with synthetic images and a tiny model, the
command line, the environment (cpsnake off PATH), and the outputs of a run in a comparable form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from paths import ROOT

GOOD = ("blobs_a", "blobs_b", "blobs_c")
PER_IMAGE = {"masks": "tif", "rois": "zip", "measurements": "csv", "overlays": "png"}


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
