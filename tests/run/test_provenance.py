"""The provenance record of a workflow run (cpsnake.run.provenance)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from workflow_run import fake_run

from cpsnake.run import provenance


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
