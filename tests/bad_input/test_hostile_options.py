"""Hostile option values: every numeric option within a documented bound
(:mod:`cpsnake.bounds`), no NaN or infinite value accepted, the workflow's config held to the same bounds and to
a job count, and inputs checked before the model loads.

"Before the model loads" is asserted by running the command with ``torch`` unimportable (``sys.modules["torch"]
= None``): a command that reached the model, or any other torch code, would fail with an ImportError traceback
instead of its one line. Tests that run snakemake are marked ``workflow``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hostile import (
    Run,
    assert_no_outputs,
    assert_one_error_line,
    fifo,
    in_process,
    small_image,
    tiff_bytes,
)
from paths import ROOT

NO_TORCH = "import sys; sys.modules['torch'] = None; from cpsnake.cli import main; raise SystemExit(main(sys.argv[1:]))"


@pytest.fixture
def no_torch(monkeypatch):
    """``import torch`` fails in this process while the test runs (the model, and all torch code, unreachable)."""
    monkeypatch.setitem(sys.modules, "torch", None)


def without_torch(*args, timeout: float = 120) -> Run:
    """``cpsnake ARGS`` in a child process where ``import torch`` fails; a command still running after
    ``timeout`` seconds is killed and reported as ``rc == "timeout"``."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", NO_TORCH, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Run("timeout", "", float("nan"))
    return Run(r.returncode, r.stderr, float("nan"))


# --- the commands, each with the arguments it needs besides the option under test ------------------


def commands(d: Path) -> dict[str, tuple[str, list]]:
    """Step -> (the name its errors carry, its arguments without options); the paths need not exist (the
    options are refused first)."""
    return {
        "normalize": ("normalize", [d / "img.tif", d / "out.tif"]),
        "infer": ("infer", [d / "norm.tif", d / "flows.tif", "--model", d / "model.pt"]),
        "reconstruct": ("reconstruct", [d / "flows.tif", d / "labels.tif"]),
        "segment": ("segment", [d / "img.tif", "--out", d / "out"]),
        "batch": ("batch", ["infer", d / "samples.tsv", "b0001", "--results", d / "res", "--model", d / "m.pt"]),
        "block": ("block", [d / "samples.tsv", "b0001", "s", "0", "--results", d / "res", "--model", d / "m.pt"]),
        "samples": ("samples", ["--images", d, "--out", d / "samples.tsv"]),
        "train": ("train", [d / "split", "--out", d / "trained"]),
        "train-size": ("train-size", [d / "model.pt", d / "split"]),
        "evaluate": ("evaluate", [d / "pred", d / "true"]),
        "train pack": ("train pack", ["pack", d / "split", d / "packed"]),
    }


def argv(step: str, d: Path, *options) -> tuple[str, list]:
    name, args = commands(d)[step]
    first = ["train"] if step == "train pack" else [step]
    return name, [*first, *args, *options]


class _Parsed(Exception):
    pass


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's argument parser, taken from its ``parse_args`` call."""
    from cpsnake.cli import STEPS, main

    found = {}
    real = argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        found[current] = self
        raise _Parsed

    argparse.ArgumentParser.parse_args = capture
    try:
        for current in [*STEPS, "train pack"]:
            if current == "weights":
                continue  # sub-commands without numeric options
            try:
                main(current.split() + ["x"])
            except _Parsed:
                pass
    finally:
        argparse.ArgumentParser.parse_args = real
    return found


def bounded_float_options() -> list[tuple[str, str, int]]:
    """(step, option, values it takes) of every real-valued option of every command."""
    from cpsnake.bounds import BOUNDS

    out = []
    for step, p in parsers().items():
        for a in p._actions:
            name = getattr(a.type, "bound", None)
            if name and BOUNDS[name].kind is float:
                out.append((step, a.option_strings[0], a.nargs if isinstance(a.nargs, int) else 1))
    return out


FLOAT_OPTIONS = bounded_float_options()


# --- point 3 and 8: every option within its documented bound, refused by name before the model -------

BAD = [
    # step, option values, what the line names besides the option
    ("segment", ["--flow3d-smooth", "1e9"], "1e9"),
    ("segment", ["--flow3d-smooth", "1", "2"], "2 values"),
    ("segment", ["--flow3d-smooth", "-1"], "-1"),
    ("segment", ["--anisotropy", "1e9"], "1e9"),
    ("segment", ["--anisotropy", "0"], "0"),
    ("segment", ["--niter", "0"], "0"),
    ("segment", ["--niter", "1000000000"], "1000000000"),
    ("segment", ["--niter", "1e999"], "1e999"),
    ("segment", ["--block-halo", "-1"], "-1"),
    ("segment", ["--block-halo", "100000"], "100000"),
    ("segment", ["--block-halo", "3000"], "2048 px"),  # more than the automatic block
    ("segment", ["--block-size", "1024", "--block-halo", "2000"], "--block-size 1024"),
    ("segment", ["--block-size", "1"], "448"),
    ("segment", ["--block-size", "-1"], "-1"),
    ("segment", ["--block-size", "1000000"], "1000000"),
    ("segment", ["--tile-norm", "1"], "64"),
    ("segment", ["--tile-norm", "-5"], "-5"),
    ("segment", ["--diameter", "0"], "0"),
    ("segment", ["--diameter", "1e9"], "1e9"),
    ("segment", ["--batch-size", "0"], "0"),
    ("segment", ["--batch-size", "100000"], "100000"),
    ("segment", ["--tile-overlap", "0.9"], "0.9"),
    ("segment", ["--min-size", "-2"], "-2"),
    ("segment", ["--max-size-fraction", "0"], "0"),
    ("segment", ["--percentiles", "1", "200"], "200"),
    ("segment", ["--percentiles", "99", "1"], "99 1"),
    ("segment", ["--low-high", "5", "1"], "5 1"),
    ("segment", ["--cellprob-threshold", "1e6"], "1e6"),
    ("segment", ["--flow-threshold", "-1"], "-1"),
    ("segment", ["--stitch-threshold", "2"], "2"),
    ("segment", ["--track-threshold", "0"], "0"),
    ("segment", ["--max-pixels", "0"], "'0'"),
    ("segment", ["--max-pixels", "1e999"], "1e999"),
    ("normalize", ["--tile-norm", "8"], "8"),
    ("normalize", ["--percentiles", "-1", "99"], "-1"),
    ("infer", ["--anisotropy", "1e9"], "1e9"),
    ("infer", ["--flow3d-smooth", "1e9"], "1e9"),
    ("infer", ["--diameter", "-3"], "-3"),
    ("infer", ["--batch-size", "0"], "0"),
    ("reconstruct", ["--niter", "0"], "0"),
    ("reconstruct", ["--diameter", "auto"], "auto"),
    ("reconstruct", ["--flow3d-threshold", "-1"], "-1"),
    ("reconstruct", ["--min-size", "10000000000"], "10000000000"),
    ("batch", ["--niter", "0"], "0"),
    ("batch", ["--anisotropy", "1e9"], "1e9"),
    ("block", ["--block-halo", "-1"], "-1"),
    ("block", ["--niter", "100000"], "100000"),
    ("samples", ["--batch-images", "0"], "0"),
    ("samples", ["--batch-images", "100000"], "100000"),
    ("samples", ["--batch-pixels", "0"], "0"),
    ("samples", ["--block-size", "1"], "1"),
    ("train", ["--steps", "0"], "0"),
    ("train", ["--steps", "1000000000"], "1000000000"),
    ("train", ["--batch-size", "0"], "0"),
    ("train", ["--batch-size", "100000"], "100000"),
    ("train", ["--lr", "0"], "0"),
    ("train", ["--weight-decay", "-1"], "-1"),
    ("train", ["--warmup", "-1"], "-1"),
    ("train", ["--decay", "-1"], "-1"),
    ("train", ["--layer-drop", "2"], "2"),
    ("train", ["--diam-range", "0", "10"], "0"),
    ("train", ["--diam-range", "60", "10"], "60 10"),
    ("train", ["--diam-labels", "1e9"], "1e9"),
    ("train", ["--log-every", "0"], "0"),
    ("train", ["--val-max", "0"], "0"),
    ("train", ["--min-train-masks", "-1"], "-1"),
    ("train", ["--workers", "100000"], "100000"),
    ("train", ["--seed", "-1"], "-1"),
    ("train-size", ["--per-image", "0"], "0"),
    ("train-size", ["--crop", "100000"], "100000"),
    ("train-size", ["--crop", "1"], "1"),
    ("train-size", ["--diam-range", "1e9", "2e9"], "1e9"),
    ("train-size", ["--l2", "-1"], "-1"),
    ("train-size", ["--seed", "-1"], "-1"),
    ("evaluate", ["--thresholds", "0.5", "1.5"], "1.5"),
    ("evaluate", ["--thresholds", "0"], "0"),
    ("train pack", ["--max-mb", "0"], "0"),
]


@pytest.mark.parametrize("step, options, shown", BAD, ids=[f"{s} {' '.join(o)}" for s, o, _ in BAD])
def test_option_bounds(tmp_path, capsys, no_torch, step, options, shown):
    """A value outside its option's bound (cpsnake.bounds) is one line naming the option and the value, exit
    code 1, before any file is read and before torch is imported (torch is unimportable here)."""
    name, args = argv(step, tmp_path, *options)
    run = in_process(capsys, *args)
    assert_one_error_line(run, name, options[0], shown)
    assert_no_outputs(*(a for a in args if isinstance(a, Path) and not a.exists()))


def test_bounds_that_depend_on_the_image_are_checked_from_its_header(tmp_path, capsys, no_torch):
    """--do-3d --anisotropy A resizes a stack to Z x A planes: beyond --max-pixels it is refused from the header,
    naming --anisotropy, before the model; a block job's halo beyond the block of its samples-table row, and a
    block index outside the grid, before the model too."""
    from cpsnake.run import samples

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.ones((10, 64, 64), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    run = in_process(
        capsys, "segment", stack, "--out", tmp_path / "o", "--do-3d", "--anisotropy", "50", "--max-pixels", "100000"
    )
    line = assert_one_error_line(run, "segment", stack, "--anisotropy 50", "500 x 64 x 64")
    assert "--max-pixels" in line and not (tmp_path / "o").exists()
    assert (
        in_process(
            capsys,
            "segment",
            stack,
            "--out",
            tmp_path / "o",
            "--do-3d",
            "--anisotropy",
            "2",
            "--max-pixels",
            "100000",
            "--model",
            tmp_path / "missing.pt",
        ).stderr.count("missing.pt")
        == 1
    )

    table = tmp_path / "samples.tsv"
    samples.write_table(
        table,
        [
            samples.Sample(
                "s",
                str(stack),
                height=2000,
                width=2000,
                channels_in_file=1,
                planes=1,
                dtype="uint8",
                pixels=4_000_000,
                batch="b0001",
                block=512,
            )
        ],
    )
    block = ["block", table, "b0001", "s", "0", "--results", tmp_path / "r", "--model", tmp_path / "m.pt"]
    line = assert_one_error_line(in_process(capsys, *block, "--block-halo", "1000"), "block", "--block-halo 1000")
    assert "512" in line
    block[4] = "16"
    assert_one_error_line(in_process(capsys, *block), "block", "block 16", "16 blocks")


# --- point 5: no NaN or infinite option value ------------------------------------------------------


def test_every_numeric_option_has_a_bound():
    """No option of any command takes a bare int() or float() (which accept 'nan', 'inf' and '1e999'): each
    goes through a row of cpsnake.bounds.BOUNDS (the block job's positional block index is checked against
    the grid)."""
    from cpsnake.io import limits

    found = parsers()
    assert {
        "segment",
        "normalize",
        "infer",
        "reconstruct",
        "batch",
        "block",
        "samples",
        "train",
        "train-size",
        "evaluate",
        "train pack",
    } <= set(found)
    bare = [
        (step, a.dest)
        for step, p in found.items()
        for a in p._actions
        if a.type in (int, float) and not (step == "block" and a.dest == "index")
    ]
    assert not bare
    kinds = {getattr(a.type, "bound", None) or a.type for p in found.values() for a in p._actions if a.type}
    assert limits._argument in kinds and len(FLOAT_OPTIONS) >= 25


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "Infinity", "NaN"])
@pytest.mark.parametrize("step, option, nargs", FLOAT_OPTIONS, ids=[f"{s} {o}" for s, o, _ in FLOAT_OPTIONS])
def test_nan_options(tmp_path, capsys, no_torch, step, option, nargs, value):
    """Every real-valued option of every command refuses NaN and infinite values with one line naming it."""
    name, args = argv(step, tmp_path, option, *[value] * nargs)
    run = in_process(capsys, *args)
    assert_one_error_line(run, name, f"{option} {value}", f"found {value}")


def test_the_workflow_config_keys_map_to_bounded_options():
    from cpsnake.bounds import BOUNDS, CONFIG, check_config

    assert set(CONFIG.values()) <= set(BOUNDS)
    schema_defaults = {
        "blocks": {"size": None, "halo": None},
        "batch": {"images": 64, "pixels": 50_000_000},
        "normalize": {"percentiles": [1.0, 99.0], "low_high": None, "tile_norm": 0},
        "inference": {"tile_overlap": 0.1},
        "diameter": None,
        "reconstruct": {
            "cellprob_threshold": 0.0,
            "flow_threshold": 0.4,
            "niter": None,
            "min_size": 15,
            "max_size_fraction": 0.4,
        },
        "stacks": {
            "anisotropy": None,
            "stitch_threshold": 0.0,
            "track_threshold": 0.25,
            "flow3d_smooth": 0.0,
            "flow3d_threshold": 0.0,
        },
    }
    check_config(schema_defaults)  # the defaults pass
    import cpsnake.bounds

    assert all(name.split()[-1] in cpsnake.bounds.__doc__ for name in BOUNDS)  # every bound documented


# --- the workflow applies the bounds and a job count -------------------------------------------------


def snakemake_n(workdir: Path, *config: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "1",
        "-n",
    ]
    return subprocess.run(
        cmd + (["--config", *config] if config else []), capture_output=True, text=True, timeout=600, check=False
    )


def _workdir(d: Path, images: int = 1, *, placeholders: bool = False, **extra) -> Path:
    """A workflow folder with ``images`` images (``placeholders``: empty files, which the DAG up to the samples
    checkpoint never reads) and a config.yaml of the bundled model and ``extra``."""
    (d / "images").mkdir(parents=True)
    for k in range(images):
        if placeholders:
            (d / "images" / f"i{k:04d}.tif").touch()
        else:
            small_image(d / "images", f"i{k:04d}.tif", shape=(160, 160))
    cfg = {"images": "images", "model": str(ROOT / "resources" / "models" / "nuclei_small.pt"), **extra}
    (d / "config.yaml").write_text(json.dumps(cfg))
    return d


def _error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    out = proc.stdout + proc.stderr  # snakemake prints its errors to either, depending on the version
    assert proc.returncode != 0, out[-2000:]
    lines = [x for x in out.splitlines() if all(n in x for n in names)]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


CONFIG_BAD = [
    ("blocks={size: 1}", "config blocks.size=1", "448"),
    ("blocks={size: 512, halo: 600}", "config blocks.halo=600", "config blocks.size 512"),
    ("diameter=nan", "config diameter=nan", "found nan"),
    ("reconstruct={niter: 1000000}", "config reconstruct.niter=1000000", "20,000"),
    ("normalize={percentiles: [99, 1]}", "config normalize.percentiles=[99, 1]", "LOW < HIGH"),
    ("normalize={tile_norm: 2}", "config normalize.tile_norm=2", "64"),
    ("stacks={anisotropy: 1000}", "config stacks.anisotropy=1000", "100"),
    ("stacks={flow3d_smooth: 1000}", "config stacks.flow3d_smooth=1000", "50"),
    ("batch={images: 100000}", "config batch.images=100000", "10,000"),
]


@pytest.mark.workflow
def test_workflow_applies_the_bounds(tmp_path):
    """snakemake -n: a config value beyond its option's bound is one line naming the config key, when the DAG is
    built (before any job); a run of more than cpsnake.bounds.MAX_JOBS jobs is refused with the fix: from the
    number of images and batch.images before the headers are read, and from the samples table (batches and
    each image's block grid) once the samples checkpoint has run."""
    from cpsnake.bounds import MAX_JOBS

    work = _workdir(tmp_path / "w")
    for config, key, expected in CONFIG_BAD:
        proc = snakemake_n(work, config)
        _error_line(proc, key, expected)
        assert not (work / "results").exists()
    assert snakemake_n(work, "blocks={size: 512, halo: 100}").returncode == 0  # good values as before

    many = _workdir(tmp_path / "many", images=MAX_JOBS // 6, placeholders=True)
    line = _error_line(snakemake_n(many, "batch={images: 1}"), "jobs", f"{MAX_JOBS // 6:,} image(s)")
    assert "at least" in line and "batch.images" in line and "blocks.size" in line
    assert snakemake_n(many, "batch={images: 2}").returncode == 0

    slide = _workdir(tmp_path / "slide", images=0, max_pixels=10**10, blocks={"size": 448})
    (slide / "images" / "slide.tif").write_bytes(tiff_bytes(60000, 60000, b"\0" * 64, bits=8))  # a header, no pixels
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(slide),
        "--cores",
        "1",
        "--until",
        "samples",
    ]
    # the headers come with the samples checkpoint: its job refuses the run, writing no table
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    log = (slide / "results" / "logs" / "samples.log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith("cpsnake samples: error: config: found a run of"), log
    assert "17,956 block jobs" in log[0] and f"at most {MAX_JOBS:,}" in log[0] and "blocks.size" in log[0]
    assert not (slide / "results" / "samples.tsv").exists()
    subprocess.run(cmd + ["--config", "blocks={size: 8192}"], check=True, capture_output=True, timeout=600)


# --- point 10: inputs checked before the model loads -------------------------------------------------


def test_fail_fast(tmp_path):
    """`cpsnake segment` checks every input (existence, kind, header, size) before the model: a missing path, a
    FIFO, a folder, an empty file, a file that is not an image, a header declaring more than --max-pixels, an
    image under 8 px are each one line; with no image left the model is never loaded (torch is unimportable
    in the child process) and nothing is written."""
    bad = {
        "missing": tmp_path / "missing.tif",
        "fifo": fifo(tmp_path, "pipe.tif"),
        "folder": tmp_path / "folder.tif",
        "empty": tmp_path / "empty.tif",
        "text": tmp_path / "text.tif",
        "oversized": tmp_path / "huge.tif",
        "thin": tmp_path / "thin.tif",
    }
    bad["folder"].mkdir()
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("sample\tpath\n")
    bad["oversized"].write_bytes(tiff_bytes(60000, 60000, b"\0" * 64, bits=8))
    tifffile.imwrite(bad["thin"], np.ones((4, 300), np.uint16))
    out = tmp_path / "out"
    for kind, path in bad.items():
        run = without_torch("segment", path, "--out", out, "--model", tmp_path / "no_model.pt", timeout=60)
        assert_one_error_line(run, "segment", path)
        assert "1 of 1 images failed" in run.stderr, kind
    run = without_torch("segment", *bad.values(), "--out", out, timeout=60)
    assert run.rc == 1 and f"{len(bad)} of {len(bad)} images failed" in run.stderr
    errors = [x for x in run.stderr.splitlines() if x.startswith("cpsnake segment: error: ")]
    assert [next(str(p) for p in bad.values() if x.split(": error: ")[1].startswith(str(p))) for x in errors] == [
        str(p) for p in bad.values()
    ]
    assert "Traceback" not in run.stderr and "warning" not in run.stderr
    assert not out.exists()
    assert_no_outputs(out / "masks" / "missing.tif")


def test_fail_fast_in_workflow_jobs(tmp_path, capsys, no_torch):
    """A batch infer job whose images all failed upstream loads no model (torch is unimportable here), and a
    block job's halo and index are checked against its samples-table row before its model."""
    from cpsnake.run import batch, samples

    table = tmp_path / "samples.tsv"
    samples.write_table(
        table,
        [
            samples.Sample(
                "a",
                str(tmp_path / "a.tif"),
                height=64,
                width=64,
                channels_in_file=1,
                planes=1,
                dtype="uint16",
                pixels=4096,
                batch="b0001",
            )
        ],
    )
    res = tmp_path / "res"
    batch.write_manifest(res / "work" / "b0001" / "normalize.tsv", [batch.Outcome("a", "failed", "a.tif: broken")])
    run = in_process(capsys, "batch", "infer", table, "b0001", "--results", res, "--model", tmp_path / "m.pt")
    assert run.rc == 0 and "error" not in run.stderr
    assert [o.status for o in batch.read_manifest(res / "work" / "b0001" / "infer.tsv")] == ["skipped"]


def test_fail_fast_keeps_the_good_images(tmp_path, capsys, tiny_model):
    """A bad input among good ones: its line first, the model loaded once for the rest, exit code 1."""
    from cpsnake.cli import main

    good = small_image(tmp_path, "good.tif")
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "missing.tif"), str(good), "--out", str(out), "--model", str(tiny_model)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and err[0].startswith("cpsnake segment: error: ") and "missing.tif" in err[0]
    assert "1 of 2 images failed" in err[-1] and (out / "masks" / "good.tif").exists()
    assert not list(out.rglob("missing*"))
