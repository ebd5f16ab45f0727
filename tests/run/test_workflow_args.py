"""cpsnake.run.workflow_args: the model, the results layout and the step arguments the workflow takes from the
package, and the one rule that makes ``model: cpsam`` the same weights in the workflow and on the command line."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from paths import ROOT
from workflow_run import make_run_dir, run_env, snakemake_cmd

from cpsnake import cli
from cpsnake.errors import CpsnakeError
from cpsnake.models import weights
from cpsnake.run import workflow_args
from cpsnake.run.config import check


def default_config(**changes) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update(changes)
    check(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return config


def test_a_registry_name_wins_over_a_file_of_that_name(tmp_path, monkeypatch):
    """A file named like a registry name in the working folder: the name means the registry's weights, in the
    workflow as in ``weights.resolve`` (``cpsnake segment``, the steps); ``./NAME`` means the file."""
    monkeypatch.chdir(tmp_path)
    for name in ("cpsam", "nuclei_small"):
        Path(name).write_bytes(b"not a model")
    assert weights.registry_entry("cpsam") is weights.REGISTRY["cpsam"]
    assert workflow_args.model("cpsam") == ("resources/weights/cpsam", "cpsam")
    with pytest.raises(CpsnakeError, match="model 'cpsam' is not in the cache"):  # the registry's, not ./cpsam
        weights.resolve("cpsam", cache_dir=tmp_path / "cache", download=False)
    file, name = workflow_args.model("nuclei_small")
    assert name == "nuclei_small" and Path(file).resolve() == weights.resolve("nuclei_small").resolve()
    assert workflow_args.model("./cpsam") == ("./cpsam", "cpsam")
    assert weights.resolve("./cpsam") == Path("cpsam")


def test_model_errors_name_the_config_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CpsnakeError, match=r"config model='nuclei_smal': .* did you mean 'nuclei_small'\?"):
        workflow_args.model("nuclei_smal")
    with pytest.raises(CpsnakeError, match="config model: /no/such/model.pt: no such file"):
        workflow_args.model("/no/such/model.pt")
    assert workflow_args.BUNDLED + workflow_args.DOWNLOADABLE == ("nuclei_small", "nuclei_unet", "cpsam", "cpsam_v2")


def test_channels_are_read_by_the_one_parser():
    assert [workflow_args.channels(v) for v in (None, 1, [0, 2], "0,2", " 0, 2 ")] == [
        None,
        [1],
        [0, 2],
        [0, 2],
        [0, 2],
    ]
    with pytest.raises(CpsnakeError, match="config channels: found '0,0', which repeats a channel"):
        workflow_args.channels("0,0")


def test_layout_patterns_and_step_arguments_of_the_default_config():
    config = default_config()
    layout = workflow_args.patterns("results")
    assert layout.manifest("infer") == "results/work/{batch}/infer.tsv"
    assert layout.block == "results/work/{batch}/blocks/{sample}/{k}.npz"
    assert (layout.samples_table, layout.normalized, layout.image_logs) == (
        "results/samples.tsv",
        "results/work/{batch}/normalized",
        "results/logs/images",
    )
    assert layout.run_outputs == [
        "results/measurements.csv",
        "results/summary.csv",
        "results/failed.csv",
        "results/provenance.json",
        "results/work/check.done",
    ]
    assert workflow_args.normalize_args(config) == "--percentiles 1.0 99.0"
    assert workflow_args.infer_args(config) == "--tile-overlap 0.1"
    assert workflow_args.reconstruct_args(config) == (
        "--cellprob-threshold 0.0 --flow-threshold 0.4 --min-size 15 --max-size-fraction 0.4"
    )
    assert workflow_args.block_args(config) == (
        "--tile-overlap 0.1 --cellprob-threshold 0.0 --flow-threshold 0.4 --max-size-fraction 0.4"
    )
    assert workflow_args.measure_args(default_config(geojson=True)) == " --geojson"
    with pytest.raises(CpsnakeError, match="config stacks: found do_3d true and stitch_threshold 0.5"):
        workflow_args.stack_args(default_config(stacks={"do_3d": True, "stitch_threshold": 0.5}))


def model_of_jobs(workdir: Path, *extra: str) -> tuple[str, set[str]]:
    """(the infer jobs' ``--model``, the weights the ``weights`` rule fetches) of a dry run in ``workdir``,
    after the samples checkpoint (so the per-batch jobs are known)."""
    subprocess.run(snakemake_cmd(workdir, "results/samples.tsv"), env=run_env(), check=True, capture_output=True)
    proc = subprocess.run(snakemake_cmd(workdir, "-n", "-p", *extra), env=run_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    models = set(re.findall(r"cpsnake batch infer .* --model (\S+) ", out))
    assert len(models) == 1, out
    return models.pop(), set(re.findall(r"weights fetch --quiet (\S+)\)", out))


@pytest.mark.workflow
def test_the_workflow_and_segment_resolve_a_model_name_to_the_same_weights(tmp_path, monkeypatch, capsys):
    """A file named ``cpsam`` (and one named ``nuclei_small``) in the working folder: ``model: cpsam`` is the
    registry's Cellpose-SAM in the workflow (the ``weights`` rule fetches it; infer reads its link) and in
    ``cpsnake segment`` (which goes to the same download, here a mirror without it); ``model: nuclei_small``
    is the bundled file in both, with the same sha256 in the provenance."""
    workdir = make_run_dir(tmp_path / "run", Path("nuclei_small"))
    for name in ("cpsam", "nuclei_small"):
        (workdir / name).write_bytes(b"a file named like a registry name")
    model, fetched = model_of_jobs(workdir)
    assert Path(model).resolve() == weights.resolve("nuclei_small").resolve() and not fetched
    monkeypatch.chdir(workdir)
    image = str(workdir / "images" / "blobs_a.tif")
    assert cli.main(["segment", image, "--out", "seg", "--model", "nuclei_small", "--device", "cpu"]) == 0
    record = json.loads(Path("seg/provenance/blobs_a.json").read_text())
    assert record["model"]["sha256"] == hashlib.sha256(Path(model).read_bytes()).hexdigest()

    (workdir / "config.yaml").write_text(
        json.dumps({**json.loads((workdir / "config.yaml").read_text()), "model": "cpsam"})
    )
    model, fetched = model_of_jobs(workdir)
    assert model == "resources/weights/cpsam" and fetched == {"cpsam"}
    monkeypatch.setenv("CPSNAKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CPSNAKE_WEIGHTS_URL", (tmp_path / "mirror").as_uri())
    capsys.readouterr()
    assert cli.main(["segment", image, "--out", "seg2", "--model", "cpsam", "--device", "cpu"]) == 1
    assert f"{(tmp_path / 'mirror').as_uri()}/cpsam: cannot connect" in capsys.readouterr().err
