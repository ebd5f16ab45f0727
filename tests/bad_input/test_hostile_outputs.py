"""Hostile output side: one line for every output that cannot be written, an image's
files all or none, links never followed, no spreadsheet formula in any table.

One test per class of problem, parametrized over its members:

1. ``test_output_side_errors_are_one_line`` -- every command that writes x every hostile output folder: a
   read-only file system, a full disk, no permission, a file where the folder goes, a file above it, and a
   folder (or, for an OME-Zarr, a file) under the final name. One line naming the path and the fix, exit
   code 1, nothing under a final name, no temporary file left.
2. ``test_an_images_outputs_are_all_or_nothing`` -- ``cpsnake segment`` (whole and block by block) on a tmpfs
   that fills up at each of an image's files, a rename that fails while the files go into place (the
   previous files come back), a batch step's two files, and a workflow-free run whose image fails in a late
   step (``aggregate`` removes its earlier files).
3. ``test_links_are_never_followed`` -- a symbolic link under an output name (to a file, to a folder, to
   nothing) is refused and neither it nor its target is changed; a link *above* the output (the output
   folder itself) is written through; ``aggregate`` leaves a failed image's link alone.
4. ``test_no_formula_cells`` -- images named ``=cmd|' -C calc'!A0`` (and with ``+ - @``, tab, carriage
   return first) through ``segment``, the batch steps, ``aggregate``, ``evaluate`` and ``train pack``: no
   CSV or TSV cell that a spreadsheet would run, and every table cpsnake reads back gives the name exactly.

The tmpfs cases mount a small tmpfs (root, as CI runs); where mounting is impossible they skip, which
tests/ci_skips.py turns into a failure under ``CI=true``. Root ignores permission bits, so the "no
permission" case runs the command in a child process without CAP_DAC_OVERRIDE.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile
from hostile import Run, assert_one_error_line, in_process
from workflow_run import blobs

from cpsnake import cli

FIND = ["--flow-threshold", "0", "--cellprob-threshold", "-0.5"]
NAME = "cells"
BALLAST = ".ballast"


# --- the machinery: tmpfs mounts, a child without CAP_DAC_OVERRIDE -------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, *, size: int = 1 << 20, read_only: bool = False, full: bool = False):
    """A tmpfs of ``size`` bytes mounted at ``where`` (made if needed) for the block; ``read_only``; ``full``:
    filled with a hidden ballast file until no byte is left."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip() or r.returncode}): run as root (CI does)")
    try:
        if full:
            with open(where / BALLAST, "wb", buffering=0) as fh, contextlib.suppress(OSError):
                while fh.write(b"\0" * 4096):
                    pass
            assert os.statvfs(where).f_bavail == 0
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _drop_dac() -> None:  # in the child, before exec: root without the right to ignore permission bits
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def without_dac(*args, timeout: float = 300) -> Run:
    """``python -m cpsnake ARGS`` in a child process that root's permission override does not cover."""
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cpsnake", *map(str, args)],
            preexec_fn=_drop_dac,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.SubprocessError as exc:
        if "prctl" in str(exc):
            pytest.skip(f"cannot drop CAP_DAC_OVERRIDE ({exc}): needs root with CAP_SETPCAP (CI has it)")
        raise
    return Run(r.returncode, r.stderr, float("nan"))


def files_under(folder: Path) -> list[Path]:
    """Every file (not folder) under ``folder``, the full-disk ballast aside."""
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and p.name != BALLAST)


# --- inputs of every command, made once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def inp(tmp_path_factory, tiny_model) -> dict:
    """One small image and what each command reads: normalized image, flows, labels, ROIs, a samples table and
    the results of a workflow-free batch run, a block-wise table, a training split, a weights source."""
    d = tmp_path_factory.mktemp("inputs")
    images = d / "images"
    images.mkdir()
    tifffile.imwrite(images / f"{NAME}.tif", blobs(0))
    img = images / f"{NAME}.tif"
    for args in (
        ["normalize", img, d / "norm.tif"],
        ["infer", d / "norm.tif", d / "flows.tif", "--model", tiny_model],
        ["reconstruct", d / "flows.tif", d / "labels.tif", *FIND],
        ["rois", d / "labels.tif", d / "rois.zip"],
        ["samples", "--images", images, "--out", d / "samples.tsv"],
        ["samples", "--images", images, "--out", d / "blocks.tsv", "--block-size", "512"],
        ["batch", "normalize", d / "blocks.tsv", "b0001", "--results", d / "bres"],
    ):
        assert cli.main([str(a) for a in args]) == 0, args
    for step in ("normalize", "infer", "reconstruct", "rois", "measure", "overlay"):
        args = ["batch", step, d / "samples.tsv", "b0001", "--results", d / "res", "--model", tiny_model, *FIND]
        assert cli.main([str(a) for a in args]) == 0, step
    args = [
        "aggregate",
        "--samples",
        d / "samples.tsv",
        "--results",
        d / "res",
        "--out-measurements",
        d / "run" / "m.csv",
        "--out-summary",
        d / "run" / "s.csv",
        "--out-failed",
        d / "run" / "failed.csv",
    ]
    assert cli.main([str(a) for a in args]) == 0
    for sub, src in (("images", img), ("masks", d / "labels.tif")):
        (d / "split" / sub).mkdir(parents=True)
        shutil.copy(src, d / "split" / sub / f"{NAME}.tif")
    (d / "weights").mkdir()
    (d / "weights" / "cpsam").write_bytes(b"\0" * 2**17)
    return {"d": d, "img": img, "model": tiny_model}


# --- 1. every command x every hostile output folder ---------------------------------------------------
# A command's builder gets the inputs and a fresh folder; it returns (args, finals, out): ``out`` is the folder
# its outputs go into (not yet made; nothing else in it or in its parent), ``finals[0]`` the output that the
# "name taken" case occupies.


def _segment(i, d, *extra):
    o = d / "o" / "seg"
    finals = [o / "masks" / f"{NAME}.tif", o / "rois" / f"{NAME}.zip", o / "provenance" / f"{NAME}.json"]
    if extra:  # --ome-zarr: the folder first
        finals.insert(0, o / "masks" / f"{NAME}.zarr")
    return ["segment", i["img"], "--out", o, "--model", i["model"], *FIND, *extra], finals, o


def _block(i, d):
    res = d / "res"
    for rel in ("work/b0001/normalize.tsv", f"work/b0001/normalized/{NAME}.json"):
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(i["d"] / "bres" / rel, res / rel)
    o = res / "work" / "b0001" / "blocks" / NAME
    args = ["block", i["d"] / "blocks.tsv", "b0001", NAME, "0", "--results", res, "--model", i["model"]]
    return args, [o / "0.npz"], o


def _x(d: Path) -> Path:
    return d / "o" / "x"


def _one_file(step: str, *inputs: str, out: str, extra=()):
    """``STEP INPUT... OUT/NAME [extra]``; ``*.tif`` / ``*.zip``: a file of the inputs folder, ``img`` the image,
    ``model`` the model, ``OUT/...`` a second output (in ``extra``), anything else as it is."""

    def build(i, d):
        def arg(a):
            return (
                i["img"]
                if a == "img"
                else i["model"]
                if a == "model"
                else _x(d) / a[4:]
                if a.startswith("OUT/")
                else i["d"] / a
                if a.endswith((".tif", ".zip"))
                else a
            )

        finals = [_x(d) / out] + [_x(d) / a[4:] for a in extra if a.startswith("OUT/")]
        return [step, *map(arg, inputs), _x(d) / out, *map(arg, extra)], finals, _x(d)

    return build


COMMANDS = {
    "segment": _segment,
    "segment --ome-zarr": lambda i, d: _segment(i, d, "--ome-zarr"),
    "normalize": _one_file("normalize", "img", out="n.tif"),
    "infer": _one_file("infer", "norm.tif", out="f.tif", extra=("--model", "model")),
    "reconstruct": _one_file("reconstruct", "flows.tif", out="m.tif", extra=FIND),
    "rois": _one_file("rois", "labels.tif", out="r.zip"),
    "rois --import": _one_file("rois", "--import", "rois.zip", "--like", "img", out="l.tif"),
    "measure": _one_file("measure", "labels.tif", "img", out="t.csv", extra=("--geojson", "OUT/t.geojson")),
    "overlay": _one_file("overlay", "img", "labels.tif", out="ov.png"),
    "geojson": _one_file("geojson", "labels.tif", out="g.geojson"),
    "samples": lambda i, d: (
        ["samples", "--images", i["img"].parent, "--out", _x(d) / "s.tsv"],
        [_x(d) / "s.tsv"],
        _x(d),
    ),
    "batch": lambda i, d: (
        ["batch", "normalize", i["d"] / "samples.tsv", "b0001", "--results", d / "o" / "res"],
        [
            d / "o" / "res" / "work" / "b0001" / "normalize.tsv",
            d / "o" / "res" / "work" / "b0001" / "normalized" / f"{NAME}.tif",
        ],
        d / "o" / "res",
    ),
    "block": _block,
    "aggregate": lambda i, d: (
        [
            "aggregate",
            "--samples",
            i["d"] / "samples.tsv",
            "--results",
            i["d"] / "res",
            "--out-measurements",
            _x(d) / "m.csv",
            "--out-summary",
            _x(d) / "s.csv",
            "--out-failed",
            _x(d) / "f.csv",
        ],
        [_x(d) / n for n in ("m.csv", "s.csv", "f.csv")],
        _x(d),
    ),
    "aggregate --check": lambda i, d: (
        ["aggregate", "--check", i["d"] / "run" / "failed.csv", "--done", _x(d) / "check.done"],
        [_x(d) / "check.done"],
        _x(d),
    ),
    "provenance": lambda i, d: (
        [
            "provenance",
            _x(d) / "p.json",
            "--model",
            i["model"],
            "--model-name",
            "tiny",
            "--samples",
            i["d"] / "samples.tsv",
            "--results",
            i["d"] / "res",
        ],
        [_x(d) / "p.json"],
        _x(d),
    ),
    "evaluate": lambda i, d: (
        ["evaluate", i["d"] / "split" / "masks", i["d"] / "split" / "masks", "--out", _x(d) / "e.csv"],
        [_x(d) / "e.csv"],
        _x(d),
    ),
    "train pack": lambda i, d: (
        ["train", "pack", i["d"] / "split", _x(d)],
        [_x(d) / "index.csv", _x(d) / "images" / f"{NAME}.png"],
        _x(d),
    ),
    "train": lambda i, d: (
        [
            "train",
            i["d"] / "split",
            "--out",
            _x(d),
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--min-train-masks",
            "1",
            "--save-every",
            "0",
        ],
        [_x(d) / n for n in ("model.pt", "checkpoint.pt", "log.csv")],
        _x(d),
    ),
    "weights fetch": lambda i, d: (
        ["weights", "fetch", "cpsam", "--cache-dir", _x(d), "--quiet", "--base-url", (i["d"] / "weights").as_uri()],
        [_x(d) / "cpsam"],
        _x(d),
    ),
}
WORKING_FILES = {"weights fetch": ("cpsam.lock", "cpsam.part")}  # the cache's lock, and a download kept to resume

STEP = {
    "train pack": "train pack",
    "weights fetch": "weights",
    "aggregate --check": "aggregate",
    "segment --ome-zarr": "segment",
    "rois --import": "rois",
}

SITUATIONS = {  # name -> (what the error line says, the path it names: "out", "parent" or "final")
    "read-only file system": (r"found a read-only file system; .*write to a folder on a writable disk", "out"),
    "full disk": (r"found a full disk \(or quota\); .*free space on the disk holding", "out"),
    "no permission": (r"found no permission to write there; .*give yourself write permission", "out"),
    "a file as the output folder": (r"found a file where a folder is needed \(.*\); .*move or rename it", "out"),
    "a file above the output folder": (r"found a file where a folder is needed \(.*\); .*move or rename it", "parent"),
    "the output name taken": (r"found a (folder|file) under an output name; expected .*; move or remove it", "final"),
}


@pytest.mark.parametrize("situation", list(SITUATIONS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_output_side_errors_are_one_line(tmp_path, capsys, inp, command, situation):
    args, finals, out = COMMANDS[command](inp, tmp_path)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    pattern, named = SITUATIONS[situation]
    with contextlib.ExitStack() as stack:
        if situation == "read-only file system":
            stack.enter_context(tmpfs(out, read_only=True))
        elif situation == "full disk":
            stack.enter_context(tmpfs(out, size=1 << 16, full=True))
        elif situation == "no permission":
            out.mkdir(parents=True)
            out.chmod(0o555)
        elif situation == "a file as the output folder":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("a file\n")
        elif situation == "a file above the output folder":
            out.parent.parent.mkdir(parents=True, exist_ok=True)
            out.parent.write_text("a file\n")
        else:  # a folder under a file's name (a file under a folder's name), with something in it to keep
            finals[0].parent.mkdir(parents=True, exist_ok=True)
            if finals[0].suffix == ".zarr":
                finals[0].write_text("keep\n")
            else:
                finals[0].mkdir()
                (finals[0] / "keep.txt").write_text("keep\n")
        before = {
            p: p.read_bytes()
            for p in (out.parent.parent.rglob("*") if out.parent.parent.exists() else [])
            if p.is_file()
        }
        if situation == "no permission":
            run = without_dac(*args)
        else:
            run = in_process(capsys, *args)
        path = {"out": out, "parent": out.parent, "final": finals[0]}[named]
        assert_one_error_line(run, STEP.get(command, command), path, pattern=pattern)
        for f in finals[1:] if situation == "the output name taken" else finals:
            assert not os.path.lexists(f), f
        if out.is_dir():  # nothing new, not even a temporary file: only what was there before
            new = [p for p in files_under(out) if p not in before and p.name not in WORKING_FILES.get(command, ())]
            assert new == [], new
        for p, data in before.items():
            assert p.read_bytes() == data, p


# --- 2. an image's files: all or none ---------------------------------------------------------------------

SEGMENT_FILES = [
    "masks/{n}.tif",
    "masks/{n}.zarr",
    "rois/{n}.zip",
    "measurements/{n}.csv",
    "geojson/{n}.geojson",
    "overlays/{n}.png",
    "provenance/{n}.json",
]  # in the order segment writes them


def _pages(path: Path) -> int:
    """4 KiB pages a tmpfs takes for a file, or for every file under a folder."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // 4096) for p in files)


def _segment_full_at(k: int, blocks: bool):
    def member(inp, tmp_path, capsys, monkeypatch):
        args = [inp["img"], "--model", inp["model"], *FIND, "--ome-zarr", "--geojson"]
        args += ["--block-size", "512"] if blocks else []
        good = tmp_path / "good"
        assert in_process(capsys, "segment", *args, "--out", good).rc == 0
        finals = [f.format(n=NAME) for f in SEGMENT_FILES]
        room = sum(_pages(good / f) for f in finals[:k])  # the files before the k-th fit, not one byte more ...
        room += k > 0 and finals[k - 1].endswith(".zarr")  # ... but zarr rewrites its metadata: a page for the copy
        with tmpfs(tmp_path / "full", size=room * 4096 + 4096, full=False) as mnt:
            (mnt / BALLAST).write_bytes(b"\0" * 4096)  # the first page holds the ballast: exactly `room` left
            run = in_process(capsys, "segment", *args, "--out", mnt / "out")
            assert_one_error_line(run, "segment", mnt / "out", pattern=r"found a full disk")
            if not blocks:  # whole: written one after the other, the k-th is the one that did not fit
                assert f"{mnt / 'out' / finals[k]}: cannot be written" in run.stderr, (finals[k], run.stderr)
            assert files_under(mnt) == [], files_under(mnt)

    return member


def _rename_fails_old_files_return(inp, tmp_path, capsys, monkeypatch):
    """A rename that fails while an image's files go into place: the renames done are undone and the files of
    the run before are back, byte for byte; no temporary file or moved-aside file is left."""
    out = tmp_path / "out"
    args = ["segment", inp["img"], "--out", out, "--model", inp["model"], *FIND, "--ome-zarr"]
    assert in_process(capsys, *args).rc == 0
    before = {p: p.read_bytes() for p in files_under(out)}
    (out / "provenance" / f"{NAME}.json").unlink()  # new in the second run: removed again by the undo
    before.pop(out / "provenance" / f"{NAME}.json")
    from cpsnake.io import outputs

    real = os.replace

    def failing(src, dst):
        if Path(dst).name == f"{NAME}.png":
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", failing)
    run = in_process(capsys, *args)
    monkeypatch.setattr(outputs.os, "replace", real)
    assert_one_error_line(run, "segment", out / "overlays" / f"{NAME}.png", pattern=r"cannot be written")
    assert {p: p.read_bytes() for p in files_under(out)} == before


def _batch_measure_full(inp, tmp_path, capsys, monkeypatch):
    """A batch measure step with --geojson whose disk fills at the GeoJSON: neither file, the image failed."""
    res = tmp_path / "res"
    shutil.copytree(inp["d"] / "res", res, ignore=shutil.ignore_patterns("measurements", "geojson", "measure.tsv"))
    table = res / "measurements" / f"{NAME}.csv"
    need = _pages(inp["d"] / "res" / "measurements" / f"{NAME}.csv")
    with tmpfs(res / "measurements", size=(need + 1) * 4096) as mnt:
        (mnt / BALLAST).write_bytes(b"\0" * 4096)
        (res / "geojson").symlink_to(mnt)  # the table and the GeoJSON share the small disk
        run = in_process(capsys, "batch", "measure", inp["d"] / "samples.tsv", "b0001", "--results", res, "--geojson")
        assert run.rc == 0, run.stderr  # the image fails alone; the job goes on and writes its manifest
        lines = [x for x in run.stderr.splitlines() if "error" in x]
        assert len(lines) == 1 and "found a full disk" in lines[0] and f"{NAME}.geojson" in lines[0], run.stderr
        assert not table.exists() and files_under(mnt) == []
    from cpsnake.run import batch

    done = batch.read_manifest(res / "work" / "b0001" / "measure.tsv")
    assert [(o.sample, o.status) for o in done] == [(NAME, "failed")]


def _failed_late_files_removed(inp, tmp_path, capsys, monkeypatch):
    """Workflow-free: an image whose measure step fails after its masks, ROIs and overlay were written is in
    failed.csv, and `aggregate` leaves none of its files (only its log)."""
    import pandas as pd

    res = tmp_path / "res"
    shutil.copytree(inp["d"] / "res", res, ignore=shutil.ignore_patterns("measurements", "measure.tsv"))
    (res / "measurements").mkdir()
    (res / "measurements" / f"{NAME}.csv").mkdir()  # the measure step cannot write its table
    assert in_process(capsys, "batch", "measure", inp["d"] / "samples.tsv", "b0001", "--results", res).rc == 0
    (res / "measurements" / f"{NAME}.csv").rmdir()
    from cpsnake.run.layout import Paths

    files = [p for p in Paths(res, "b0001").image_files(NAME) if p.exists()]
    assert len(files) == 4, files  # masks, ROIs, overlay and its report link, from the steps before
    run = in_process(
        capsys,
        "aggregate",
        "--samples",
        inp["d"] / "samples.tsv",
        "--results",
        res,
        "--out-measurements",
        res / "m.csv",
        "--out-summary",
        res / "s.csv",
        "--out-failed",
        res / "f.csv",
    )
    assert run.rc == 0, run.stderr
    failed = pd.read_csv(res / "f.csv")
    assert list(zip(failed["image"], failed["step"])) == [(NAME, "measure")]
    assert len(pd.read_csv(res / "s.csv")) == 0 and len(pd.read_csv(res / "m.csv")) == 0
    assert [p for p in files if os.path.lexists(p)] == []
    assert (res / "logs" / "images" / f"{NAME}.log").is_file()


def _scratch_full(inp, tmp_path, capsys, monkeypatch):
    """Block-wise segmentation keeps block flows and the label image in a scratch folder ($TMPDIR): a full
    scratch disk is one line naming it and the fix (TMPDIR), and no output is left."""
    import tempfile

    with tmpfs(tmp_path / "scratch", size=1 << 20, full=True) as mnt:
        monkeypatch.setattr(tempfile, "tempdir", str(mnt))
        out = tmp_path / "out"
        run = in_process(
            capsys, "segment", inp["img"], "--model", inp["model"], *FIND, "--block-size", "512", "--out", out
        )
        assert_one_error_line(run, "segment", mnt, pattern=r"scratch folder .*found a full disk.*TMPDIR")
        assert files_under(out) == [], files_under(out)


ALL_OR_NOTHING = {
    **{
        f"segment: the disk fills at {f.split('/')[0]}/{f.split('.')[-1]}": _segment_full_at(k, False)
        for k, f in enumerate(SEGMENT_FILES)
    },
    **{
        f"segment in blocks: the disk fills at {f.split('/')[0]}/{f.split('.')[-1]}": _segment_full_at(k, True)
        for k, f in enumerate(SEGMENT_FILES)
    },
    "a rename fails: the files before come back": _rename_fails_old_files_return,
    "batch measure --geojson: the disk fills at the GeoJSON": _batch_measure_full,
    "workflow-free run: a late failure removes the earlier files": _failed_late_files_removed,
    "segment in blocks: the scratch disk is full": _scratch_full,
}


@pytest.mark.parametrize("member", list(ALL_OR_NOTHING))
def test_an_images_outputs_are_all_or_nothing(tmp_path, capsys, monkeypatch, inp, member):
    ALL_OR_NOTHING[member](inp, tmp_path, capsys, monkeypatch)


# --- 3. links ------------------------------------------------------------------------------------------------


def _victim(d: Path, kind: str) -> Path:
    """What a link points at: a file, a folder with a file in it, or nothing."""
    v = d / "victim"
    if kind == "file":
        v.write_bytes(b"precious\n")
    elif kind == "folder":
        v.mkdir()
        (v / "precious.txt").write_bytes(b"precious\n")
    return v


def _state(p: Path):
    if p.is_dir():
        return {q.relative_to(p): q.read_bytes() for q in p.rglob("*") if q.is_file()}
    return p.read_bytes() if p.exists() else None


LINKS = {  # member -> (command builder, which final is the link, what it points at)
    "segment: masks/NAME.tif -> a file": (_segment, "masks/cells.tif", "file"),
    "segment: masks/NAME.tif -> a folder": (_segment, "masks/cells.tif", "folder"),
    "segment --ome-zarr: masks/NAME.zarr -> a folder": (
        lambda i, d: _segment(i, d, "--ome-zarr"),
        "masks/cells.zarr",
        "folder",
    ),
    "segment --ome-zarr: masks/NAME.zarr -> a file": (
        lambda i, d: _segment(i, d, "--ome-zarr"),
        "masks/cells.zarr",
        "file",
    ),
    "segment: overlays/NAME.png -> nothing": (_segment, "overlays/cells.png", "nothing"),
    "normalize: OUT.json -> a file": (COMMANDS["normalize"], "n.json", "file"),
    "batch: manifest -> a file": (COMMANDS["batch"], "work/b0001/normalize.tsv", "file"),
    "weights fetch: the cache's file -> nothing": (COMMANDS["weights fetch"], "cpsam", "nothing"),
}


@pytest.mark.parametrize(
    "member",
    [*LINKS, "the output folder is a link: written through", "aggregate: a failed image's mask is a link: left alone"],
)
def test_links_are_never_followed(tmp_path, capsys, inp, member):
    if member == "the output folder is a link: written through":
        real = tmp_path / "elsewhere"
        real.mkdir()
        (tmp_path / "out").symlink_to(real)
        run = in_process(capsys, "segment", inp["img"], "--out", tmp_path / "out", "--model", inp["model"], *FIND)
        assert run.rc == 0, run.stderr
        assert (real / "masks" / f"{NAME}.tif").is_file() and (tmp_path / "out").is_symlink()
        return
    if member.startswith("aggregate"):
        res = tmp_path / "res"
        shutil.copytree(inp["d"] / "res", res)
        for step in ("rois", "measure", "overlay"):  # the image failed at rois: its masks are a link by now
            status = "failed" if step == "rois" else "skipped"
            (res / "work" / "b0001" / f"{step}.tsv").write_text(
                f"sample\tstatus\treason\tseconds\tinfo\n{NAME}\t{status}\tx\t0\t{{}}\n"
            )
        victim = _victim(tmp_path, "file")
        mask = res / "masks" / f"{NAME}.tif"
        mask.unlink()
        mask.symlink_to(victim)
        run = in_process(
            capsys,
            "aggregate",
            "--samples",
            inp["d"] / "samples.tsv",
            "--results",
            res,
            "--out-measurements",
            res / "m.csv",
            "--out-summary",
            res / "s.csv",
            "--out-failed",
            res / "f.csv",
        )
        assert run.rc == 0, run.stderr
        assert mask.is_symlink() and victim.read_bytes() == b"precious\n"
        assert not (res / "rois" / f"{NAME}.zip").exists()  # a real file of the failed image: removed
        return
    build, rel, kind = LINKS[member]
    args, finals, out = build(inp, tmp_path)
    link = out / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    victim = _victim(tmp_path, kind)
    link.symlink_to(victim)
    before = _state(victim)
    run = in_process(capsys, *args)
    step = "weights" if member.startswith("weights") else args[0]
    assert_one_error_line(run, step, link, pattern=r"found a symbolic link .* under an output name; .*remove the link")
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert _state(victim) == before
    for f in finals:
        assert f == link or not os.path.lexists(f), f


# --- 4. formula cells ----------------------------------------------------------------------------------------

PREFIXES = {"=": "=", "+": "+", "-": "-", "@": "@", "tab": "\t", "carriage return": "\r"}


def _tables(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".csv", ".tsv") and p.is_file())


def _formula_cells(path: Path) -> list[str]:
    """The cells of a CSV / TSV that a spreadsheet would run: text starting with = + - @ tab or CR."""
    from cpsnake.io.tables import _NUMBER, FORMULA_START

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))
    return [c for r in rows for c in r if c[:1] in FORMULA_START and not _NUMBER.fullmatch(c)]


@pytest.mark.parametrize("prefix", list(PREFIXES))
def test_no_formula_cells(tmp_path, capsys, inp, prefix):
    import pandas as pd

    from cpsnake.io import tables
    from cpsnake.run import batch, samples
    from cpsnake.run.aggregate import _read_measurements
    from cpsnake.training.data import _read_index

    name = PREFIXES[prefix] + "cmd|' -C calc'!A0"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(inp["img"], images / f"{name}.tif")
    img = images / f"{name}.tif"
    seg, res = tmp_path / "seg", tmp_path / "res"
    assert in_process(capsys, "segment", img, "--out", seg, "--model", inp["model"], *FIND, "--geojson").rc == 0
    assert in_process(capsys, "samples", "--images", images, "--out", res / "samples.tsv").rc == 0
    for step in ("normalize", "infer", "reconstruct", "rois", "measure", "overlay"):
        run = in_process(
            capsys, "batch", step, res / "samples.tsv", "b0001", "--results", res, "--model", inp["model"], *FIND
        )
        assert run.rc == 0 and "1 ok" in run.stderr, run.stderr
    assert (
        in_process(
            capsys,
            "aggregate",
            "--samples",
            res / "samples.tsv",
            "--results",
            res,
            "--out-measurements",
            res / "measurements.csv",
            "--out-summary",
            res / "summary.csv",
            "--out-failed",
            res / "failed.csv",
        ).rc
        == 0
    )
    pred, true = tmp_path / "pred", tmp_path / "true"
    for d in (pred, true):
        d.mkdir()
        shutil.copy(seg / "masks" / f"{name}.tif", d / f"{name}.tif")
    split = tmp_path / "split"
    for sub, src in (("images", img), ("masks", seg / "masks" / f"{name}.tif")):
        (split / sub).mkdir(parents=True)
        shutil.copy(src, split / sub / f"{name}.tif")
    pd.DataFrame({"file": [f"{name}.tif"], "modality": [name], "score": ["-0.5"]}).to_csv(  # the user's index
        split / "index.csv", index=False, quoting=csv.QUOTE_ALL
    )
    assert (
        in_process(
            capsys, "evaluate", pred, true, "--out", tmp_path / "ev" / "scores.csv", "--index", split / "index.csv"
        ).rc
        == 0
    )
    assert in_process(capsys, "train", "pack", split, tmp_path / "pack").rc == 0

    written = _tables(seg) + _tables(res) + _tables(tmp_path / "ev") + _tables(tmp_path / "pack")
    assert len(written) == 14, written  # seg 1; samples, 6 manifests, 1 table, 3 run tables; evaluate; pack index
    for path in written:
        assert _formula_cells(path) == [], path
    assert sum(name in tables.read_cell(c) for p in written for c in _cells(p)) >= 19  # the name is there, quoted
    # the tables cpsnake reads back give the name exactly
    assert [s.sample for s in samples.read_table(res / "samples.tsv")] == [name]
    assert samples.read_table(res / "samples.tsv")[0].path == str(img)
    for step in batch.STEPS:
        assert [o.sample for o in batch.read_manifest(res / "work" / "b0001" / f"{step}.tsv")] == [name]
    assert set(_read_measurements(res / "measurements" / f"{name}.csv")["image"]) == {f"{name}.tif"}
    assert set(pd.read_csv(res / "measurements.csv")["image"].map(tables.read_cell)) == {name}
    packed = _read_index(tmp_path / "pack" / "index.csv")
    assert list(packed["modality"]) == [name] and list(packed["score"]) == ["-0.5"]
    assert "'-0.5" not in (tmp_path / "pack" / "index.csv").read_text()  # a number stays a number


def _cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for r in csv.reader(fh, delimiter="\t" if path.suffix == ".tsv" else ",") for c in r]


@pytest.mark.parametrize(
    "text", ["=1+2", "+1", "-x", "@SUM(A1)", "\tx", "\rx", "'quoted", "''", "plain", "-1.5", "+2e-3", "", "-", "'=x"]
)
def test_table_cells_round_trip(text):
    from cpsnake.io.tables import _NUMBER, FORMULA_START, cell, read_cell

    written = cell(text)
    assert read_cell(written) == text
    assert not (written[:1] in FORMULA_START and not _NUMBER.fullmatch(written))
    assert (written == text) == (text[:1] not in (*FORMULA_START, "'") or bool(_NUMBER.fullmatch(text)))
