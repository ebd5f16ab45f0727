"""The Snakemake workflow end to end.

Workflow tests (marker ``workflow``) run the real Snakefile with the local profile on tiny synthetic
images and a tiny random-weights model, with cpsnake off PATH (the rules call the environment's own
Python): they check the plumbing (every output, one job per batch and step, logs, benchmarks, temporary
files, provenance, the report), that batches give the same outputs as one image per job, that a bad
input fails alone inside its batch while the run tables are written, that a new image reruns only its
batch, sample sheets with per-image options and an output folder of its own, and that a run killed with
SIGKILL and run again gives the outputs of an uninterrupted run. The helpers that run the workflow are in
``workflow_run.py``; the unit tests of overlay, aggregate and provenance in their own files.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from paths import ROOT
from workflow_run import (
    GOOD,
    PER_IMAGE,
    blobs,
    comparable,
    jobs_run,
    make_run_dir,
    outputs_of,
    run_env,
    snakemake,
    snakemake_cmd,
)


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
    labels equal the whole image's, tests/engine/test_blocks.py) bit for bit. Each block job, and the reconstruct
    job that stitches the blocks, asks for the memory of a block (the same for any image size), and every
    job's peak stays within its request (cpsnake.run.jobmem). An OME-Zarr image in the
    folder goes the same way. A corrupt tiled TIFF in blocks fails alone, with its one line, at the
    streaming pass.

    Catches: block jobs reading another grid, pass 2 with a block's own diffusion length instead of the
    maximum over all blocks, values streamed differently from the one-process run, block files left from
    another grid accepted, a failed image failing the run, a request below what its job takes.
    """
    import re

    from synthetic import nuclei_mosaic

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
    from synthetic import write_ome_zarr

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
