"""Hostile input on the workflow's start-up and the sample sheets: nothing hangs, one line each.

One test per class of problem, parametrized over its members:

1. ``test_nothing_hangs_on_a_sheet`` -- a FIFO, socket or device given as the sample sheet, as ``images``,
   as the model or as the working folder's config.yaml is refused at once, by ``cpsnake samples`` and by
   ``snakemake -n``; one named like an
   image inside an images folder (or matched by a glob, or named by a sheet row), or a broken link there,
   is listed as a failed sample with its one line, never opened and never dropped silently.
2. ``test_sheet_errors_are_one_line`` -- malformed sheets (a cell over the csv module's field size limit,
   NUL bytes, bad quoting, binary data, UTF-16 / Latin-1 text, a file over 64 MiB, extra cells, a repeated
   column, bad cells): one line naming the sheet and the row, from ``cpsnake samples`` and from the
   workflow; a ``channels`` cell naming a channel that the image lacks fails that image alone, naming the
   sheet's cell.
3. ``test_config_errors_are_one_line`` -- a bad workflow config (wrong types and bounds, unknown keys with
   the closest known one, nested keys, the model, the images, the stack options): one line naming the key,
   what was found and what was expected; no traceback, no Python frames, no schema dump.
4. ``test_results_root`` -- ``results`` resolving to the working folder or a folder above it is refused;
   a results folder of its own (trailing separator or not) works as before.
5. ``test_config_defaults_are_snakemakes`` -- the defaults the config check fills in are exactly those of
   ``snakemake.utils.validate``.

Snakemake runs as tests/faces/test_workflow.py runs it (same environment), with ``-n`` wherever the error comes
at parse time, so each case costs seconds; every command runs with a timeout, so a hang fails the test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    Run,
    assert_no_outputs,
    assert_one_error_line,
    cpsnake,
    fifo,
    in_process,
    small_image,
    unix_socket,
    write_tif,
)
from paths import ROOT
from workflow_run import run_env

SNAKEMAKE_INFO = "Config file config.yaml is extended by additional config specified via the command line."
WORKFLOW = pytest.mark.workflow


def run_dir(d: Path) -> Path:
    """A working folder: images/a.tif (64 x 64 grey), a stand-in model file and a config.yaml naming them."""
    (d / "images").mkdir(parents=True)
    small_image(d / "images", "a.tif")
    (d / "model.pt").write_bytes(b"not loaded by a dry run")
    (d / "config.yaml").write_text(json.dumps({"images": str(d / "images"), "model": str(d / "model.pt")}))
    return d


def snakemake(d: Path, *config: str, targets=(), dry: bool = True, timeout: float = 180) -> Run:
    """``snakemake [-n] [--config CONFIG...] [TARGETS]`` in ``d``; rc ("timeout" on a hang) and stdout + stderr,
    without Snakemake's note that --config extends the config file."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *map(str, targets),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(d),
        "--cores",
        "1",
        *(["-n"] if dry else []),
        *(["--config", *config] if config else []),
    ]
    try:
        proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Run("timeout", "", math.nan)
    out = "\n".join(x for x in (proc.stdout + proc.stderr).splitlines() if x.strip() and x != SNAKEMAKE_INFO)
    return Run(proc.returncode, out + "\n", math.nan)


def assert_one_workflow_line(run: Run, *names, pattern: str | None = None) -> str:
    """Exit 1 and one line ``cpsnake workflow: error: config ...`` naming ``names``: no traceback, no Python
    frames, no Snakemake error header, no jsonschema text."""
    line = assert_one_error_line(run, "workflow", *names, pattern=pattern)
    assert line.startswith("cpsnake workflow: error: config"), line
    for noise in ('File "', "WorkflowError", "Failed validating", "schema[", "$schema", "On instance"):
        assert noise not in run.stderr, run.stderr
    return line


def table_row(table: Path, name: str) -> dict:
    from cpsnake.run.samples import read_table

    return next(s for s in read_table(table) if s.sample == name).__dict__


# --- 1. nothing hangs --------------------------------------------------------------------------------


def _broken_link(d, name="gone.tif"):
    (d / name).symlink_to(d / "missing.tif")
    return d / name


def _whole(option, make):
    """The input itself (``--sheet`` / ``--images`` / config ``model``) is ``make(d)``: refused at once."""

    def build(d):
        bad = make(d)
        return option, bad, bad, False

    return build


def _in_folder(make, name):
    """An images folder holding a good image and ``make(folder, name)``: listed as a failed sample."""

    def build(d):
        folder = d / "mixed"
        folder.mkdir()
        small_image(folder, "good.tif")
        return "images", folder, make(folder, name), True

    return build


def _by_glob(d):
    folder = d / "globbed"
    folder.mkdir()
    small_image(folder, "good.tif")
    return "images", str(folder / "*.tif"), fifo(folder, "pipe.tif"), True


def _sheet_row(d):
    small_image(d, "good.tif")
    bad = fifo(d, "pipe.tif")
    sheet = d / "rows.tsv"
    sheet.write_text(f"sample\tpath\ngood\tgood.tif\npipe\t{bad.name}\n")
    return "sheet", sheet, bad, True


HANG_CASES = {
    "sheet-fifo": _whole("sheet", lambda d: fifo(d, "s.tsv")),
    "sheet-socket": _whole("sheet", lambda d: unix_socket(d, "s.tsv")),
    "sheet-device": _whole("sheet", lambda d: Path("/dev/zero")),
    "images-fifo": _whole("images", lambda d: fifo(d, "img.tif")),
    "images-socket": _whole("images", lambda d: unix_socket(d, "img.tif")),
    "images-broken-link": _whole("images", _broken_link),
    "model-fifo": _whole("model", lambda d: fifo(d, "m.pt")),
    "model-socket": _whole("model", lambda d: unix_socket(d, "m.pt")),
    "model-device": _whole("model", lambda d: Path("/dev/zero")),
    "config-yaml-fifo": _whole("config.yaml", lambda d: d),  # the working folder's config.yaml, made a FIFO below
    "folder-fifo": _in_folder(fifo, "pipe.tif"),
    "folder-socket": _in_folder(unix_socket, "sock.png"),
    "folder-broken-link": _in_folder(_broken_link, "gone.tif"),
    "glob-fifo": _by_glob,
    "sheet-row-fifo": _sheet_row,
}
CONFIG_KEY = {"sheet": "samples", "images": "images", "model": "model"}


@pytest.mark.parametrize(
    "tool, member",
    [
        ("samples", m) if tool == "samples" else pytest.param("workflow", m, marks=WORKFLOW)
        for m in HANG_CASES
        for tool in ("samples", "workflow")
        if not (tool == "samples" and m.startswith(("model", "config")))
    ],
)
def test_nothing_hangs_on_a_sheet(tmp_path, tool, member):
    option, value, bad, listed = HANG_CASES[member](tmp_path)
    name = Path(bad).name.split(".")[0]
    if tool == "samples":
        out = tmp_path / "t.tsv"
        run = cpsnake("samples", f"--{option}", value, "--out", out, timeout=60)
        if not listed:
            assert_one_error_line(run, "samples", bad, "not a regular file" if "link" not in member else "link")
            assert_no_outputs(out)
            return
        assert run.rc == 0, run.stderr
        table = out
    else:
        d = run_dir(tmp_path / "run")
        if option == "config.yaml":  # Snakemake's own `configfile:` would open it
            config = json.loads((d / "config.yaml").read_text())
            (d / "config.yaml").unlink()
            os.mkfifo(d / "config.yaml")
            run = snakemake(d, *(f"{k}={v}" for k, v in config.items()), timeout=60)
            assert_one_workflow_line(run, "config.yaml: found a FIFO")
            return
        key = CONFIG_KEY[option]
        if not listed:
            assert_one_workflow_line(snakemake(d, f"{key}={value}", timeout=60), f"config {key}: {bad}")
            return
        # the samples checkpoint itself (a real job, not a dry run) lists the bad entry as failed
        run = snakemake(d, f"{key}={value}", "results=res", targets=["res/samples.tsv"], dry=False, timeout=120)
        assert run.rc == 0, run.stderr
        table = d / "res" / "samples.tsv"
    row = table_row(table, name)
    assert row["status"] == "failed" and row["reason"].startswith(f"{bad}: "), row
    assert table_row(table, "good")["status"] == "ok"


# --- 2. sheets -----------------------------------------------------------------------------------------


def _sheet(d: Path, body: bytes | str) -> Path:
    p = d / "s.tsv"
    p.write_bytes(body.encode() if isinstance(body, str) else body)
    return p


def _channel_sheet(d: Path) -> Path:
    write_tif(d / "rgb.tif", np.zeros((3, 32, 32), np.uint8), imagej=True, metadata={"axes": "CYX"})
    small_image(d, "grey.tif")
    return _sheet(d, "sample\tpath\tchannels\nrgb\trgb.tif\t0,5\ngrey\tgrey.tif\t0\n")


def _huge(d: Path) -> Path:
    p = d / "s.tsv"
    with open(p, "wb") as fh:
        fh.write(b"sample\tpath\n")
        fh.truncate(65 * 2**20)  # sparse: 65 MiB on paper
    return p


SHEET_CASES = {
    "field-over-limit": (lambda d: _sheet(d, "sample\tpath\na\t" + "x" * 200_000 + "\n"), "line 2", "131,072"),
    "nul": (lambda d: _sheet(d, b"sample\tpath\na\x00b\tx.tif\n"), "line 2", "not UTF-8"),
    "unclosed-quote": (lambda d: _sheet(d, 'sample\tpath\nb\tb.tif\na\t"x.tif\nc\tc.tif\n'), "line 3", "never closed"),
    "text-after-quote": (lambda d: _sheet(d, 'sample,path\na,"x"y.tif\n'), "line 2", "after the closing quote"),
    "binary": (lambda d: _sheet(d, np.random.default_rng(0).bytes(4096)), "line ", "not UTF-8"),
    "utf16": (lambda d: _sheet(d, "sample\tpath\na\tx.tif\n".encode("utf-16")), "line 1", "not UTF-8"),
    "latin1": (lambda d: _sheet(d, "sample\tpath\nb\xe9\tx.tif\n".encode("latin-1")), "line 2", "not UTF-8"),
    "huge": (_huge, "", "more than the 67,108,864 bytes"),
    "extra-cells": (lambda d: _sheet(d, "sample\tpath\na\tx.tif\tred\n"), "line 2", "found 3 cells"),
    "repeated-column": (lambda d: _sheet(d, "sample\tpath\tsample\na\tx.tif\tb\n"), "", "'sample' appear twice"),
    "bad-name": (lambda d: _sheet(d, "sample\tpath\n" + "a b" * 10_000 + "\tx.tif\n"), "line 2", "sample name"),
    "bad-channels-cell": (lambda d: _sheet(d, "sample\tpath\tchannels\na\tx.tif\t0,0\n"), "line 2", "channels '0,0'"),
    "empty": (lambda d: _sheet(d, ""), "", "empty sample sheet"),
    # a channel that the image lacks: that image fails at `cpsnake samples`, the others go on
    "channel-the-image-lacks": (_channel_sheet, "line 2", "channels 0,5 names channel 5, but "),
}


# the workflow reads a sheet with the same function: a few members check that its line reaches the user whole
IN_WORKFLOW = ("field-over-limit", "nul", "unclosed-quote", "huge", "bad-name", "channel-the-image-lacks")


@pytest.mark.parametrize(
    "tool, member",
    [("samples", m) for m in SHEET_CASES] + [pytest.param("workflow", m, marks=WORKFLOW) for m in IN_WORKFLOW],
)
def test_sheet_errors_are_one_line(tmp_path, capsys, tool, member):
    """One line naming the sheet and the row; a channels cell naming a channel that the image lacks fails that
    image alone (in samples.tsv, so in failed.csv), naming the sheet's cell, not a --channels option."""
    make, where, found = SHEET_CASES[member]
    sheet = make(tmp_path)
    named = f"{sheet} {where}".strip()
    if member == "channel-the-image-lacks":
        if tool == "samples":
            table = tmp_path / "t.tsv"
            assert cpsnake("samples", "--sheet", sheet, "--out", table, timeout=60).rc == 0
        else:
            d = run_dir(tmp_path / "run")
            run = snakemake(d, f"samples={sheet}", "results=res", targets=["res/samples.tsv"], dry=False, timeout=120)
            assert run.rc == 0, run.stderr
            table = d / "res" / "samples.tsv"
        rgb, grey = table_row(table, "rgb"), table_row(table, "grey")
        assert rgb["status"] == "failed" and rgb["reason"].startswith(f"{named}: {found}{tmp_path / 'rgb.tif'} has 3 ")
        assert "--channels" not in rgb["reason"] and grey["status"] == "ok" and grey["batch"]
        return
    if tool == "samples":
        out = tmp_path / "t.tsv"
        line = assert_one_error_line(
            in_process(capsys, "samples", "--sheet", sheet, "--out", out), "samples", named, found
        )
        assert_no_outputs(out)
    else:
        line = assert_one_workflow_line(
            snakemake(run_dir(tmp_path / "run"), f"samples={sheet}", timeout=60), f"config samples: {named}", found
        )
    assert len(line) < 600, line  # a long cell is never quoted whole


# --- 3. config -----------------------------------------------------------------------------------------


def _two_named_a(d):
    (d / "dup" / "x").mkdir(parents=True)
    small_image(d / "dup", "a.tif")
    small_image(d / "dup" / "x", "a.tif")
    return [f"images={d / 'dup'}/**/*.tif"]


CONFIG_CASES = {
    "bound": (["batch={images: 0}"], ["config batch.images: found 0; expected a whole number >= 1"]),
    "typo": (["diamter=17"], ["'diamter'", "did you mean 'diameter'?"]),
    "nested-typo": (["batch={imagess: 3}"], ["'batch.imagess'", "did you mean 'batch.images'?"]),
    "unknown-key": (["colour=red"], ["'colour'", "the known keys are images, samples, results"]),
    "nested-unknown": (["stacks={do3d: true}"], ["'stacks.do3d'", "'stacks.do_3d'"]),
    "type": (["reconstruct={flow_threshold: high}"], ['reconstruct.flow_threshold: found "high"', "a number >= 0"]),
    "negative": (["reconstruct={flow_threshold: -1}"], ["reconstruct.flow_threshold: found -1"]),
    "mapping": (["batch=5"], ["config batch: found 5", "a mapping of images, pixels"]),
    "list-length": (["normalize={percentiles: [1]}"], ["normalize.percentiles: found [1]", "a list of 2 items"]),
    "list-item": (["normalize={percentiles: [1, 200]}"], ["normalize.percentiles[1]: found 200", "from 0 to 100"]),
    "boolean": (["keep={flows: maybe}"], ['keep.flows: found "maybe"', "true or false"]),
    "channels-text": (["channels=a,b"], ['channels: found "a,b"']),
    "channels-item": (["channels=[0,a]"], ['channels[1]: found "a"']),
    "channels-four": (["channels=[0,1,2,3]"], ["channels: found [0, 1, 2, 3]", "1 to 3 items"]),
    "channels-repeated": (["channels=0,0"], ["config channels: found '0,0'", "repeats a channel"]),
    "diameter": (["diameter=-3"], ["diameter: found -3", 'a number > 0 or "auto" or null']),
    "empty-results": (["results="], ["config results: found null"]),
    "stacks": (["stacks={do_3d: true, stitch_threshold: 0.5}"], ["config stacks: found do_3d true"]),
    "model-name": (["model=nuclei_smal"], ["config model='nuclei_smal'", "did you mean 'nuclei_small'?"]),
    "model-missing": (["model=/no/such/model.pt"], ["config model: /no/such/model.pt: no such file"]),
    "no-images": (["images=/no/such/folder"], ["config images='/no/such/folder': found no image files"]),
    "duplicate-names": (_two_named_a, ["found two files named 'a'"]),
}


@WORKFLOW
@pytest.mark.parametrize("member", list(CONFIG_CASES))
def test_config_errors_are_one_line(tmp_path, member):
    config, names = CONFIG_CASES[member]
    config = config(tmp_path) if callable(config) else config
    assert_one_workflow_line(snakemake(run_dir(tmp_path / "run"), *config, timeout=60), *names)


# --- 4. results ----------------------------------------------------------------------------------------


def _link_here(d):
    (d / "here").symlink_to(".")
    return "here"


RESULTS_CASES = {
    "root": ("/", "/, a folder above the working folder"),
    "dot": (".", "the working folder"),
    "dot-slash": ("./", "the working folder"),
    "parent": ("..", "a folder above the working folder"),
    "back-up": ("out/..", "the working folder"),
    "link-to-here": (_link_here, "the working folder"),
    "own-folder": ("out/run1", None),
    "own-folder-slash": ("out/run1/", None),
}


@WORKFLOW
@pytest.mark.parametrize("member", list(RESULTS_CASES))
def test_results_root(tmp_path, member):
    """results= the working folder or above it is refused (the run's masks/, work/, logs/ would mix with
    the working folder's files, which a glob of images could pick up); a folder of its own works."""
    value, found = RESULTS_CASES[member]
    d = run_dir(tmp_path)
    value = value(d) if callable(value) else value
    run = snakemake(d, f"results={value}", timeout=60)
    if found is None:
        assert run.rc == 0, run.stderr
        assert "output: out/run1/samples.tsv" in run.stderr and "out/run1//" not in run.stderr
        return
    assert_one_workflow_line(run, f"config results={value!r}: found ", found)
    assert not [p for p in os.listdir(d) if p not in ("images", "model.pt", "config.yaml", ".snakemake", "here")]


# --- 5. good configs keep their defaults -----------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"batch": {"images": 3}, "stacks": {"do_3d": True, "anisotropy": 2.0}, "channels": "0,2"},
        {"reconstruct": {"flow_threshold": 0.0, "cellprob_threshold": -0.5}, "samples": "s.tsv", "results": "out/x"},
        "config.yaml",
    ],
)
def test_config_defaults_are_snakemakes(config):
    """cpsnake.run.config.check fills in what snakemake.utils.validate(config, schema) fills in, value for value."""
    import copy

    import yaml
    from snakemake.utils import validate

    from cpsnake.run.config import check

    if config == "config.yaml":
        config = yaml.safe_load((ROOT / "config.yaml").read_text())
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    ours, theirs = copy.deepcopy(config), copy.deepcopy(config)
    check(ours, schema)
    validate(theirs, str(schema))
    assert json.dumps(ours) == json.dumps(theirs)
