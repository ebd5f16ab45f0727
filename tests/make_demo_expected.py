"""Write tests/data/demo_expected/MODEL/: what a bundled model finds on the demo images (test_bundled.py's reference).

Run from the repository root, after a deliberate change of a bundled model or of the engine's results::

    .venv/bin/python tests/make_demo_expected.py [MODEL ...]   # default: every bundled model

For each model it runs ``cpsnake segment resources/demo/images/* --out TMP --model MODEL`` (default
parameters) and copies each ``masks/NAME.tif`` (uint16, zlib-compressed) plus ``counts.json`` (cells per
image, the model's sha256) into tests/data/demo_expected/MODEL/. Commit the result with the change that
explains it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "resources" / "demo" / "images"
OUT = ROOT / "tests" / "data" / "demo_expected"


def write(model: str) -> int:
    from cpsnake import cli
    from cpsnake.io.files import sha256
    from cpsnake.io.labels import read_labels
    from cpsnake.models import weights

    images = sorted(p for p in DEMO.iterdir() if p.suffix == ".tif")
    out = OUT / model
    with tempfile.TemporaryDirectory() as tmp:
        if cli.main(["segment", *map(str, images), "--out", tmp, "--model", model]) != 0:
            return 1
        (out / "masks").mkdir(parents=True, exist_ok=True)
        counts = {}
        for img in images:
            labels, _ = read_labels(Path(tmp) / "masks" / f"{img.stem}.tif")
            counts[img.stem] = int(labels.max())
            tifffile.imwrite(out / "masks" / f"{img.stem}.tif", labels.astype("uint16"), compression="zlib")
    doc = {"model": model, "sha256": sha256(weights.resolve(model)), "cells": counts}
    (out / "counts.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(model, json.dumps(counts))
    return 0


def main(argv: list[str]) -> int:
    from cpsnake.models import weights

    names = argv or [name for name, entry in weights.REGISTRY.items() if entry.bundled]
    return max(write(name) for name in names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
