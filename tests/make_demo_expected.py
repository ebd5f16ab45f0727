"""Write tests/data/demo_expected/: what the bundled model finds on the demo images (test_bundled.py's reference).

Run from the repository root, after a deliberate change of the bundled model or of the engine's results::

    .venv/bin/python tests/make_demo_expected.py

It runs ``cpsnake segment resources/demo/images/* --out TMP`` (bundled ``nuclei_small``, default parameters)
and copies each ``masks/NAME.tif`` (uint16, zlib-compressed) plus ``counts.json`` (cells per image, the
model's sha256) into tests/data/demo_expected/. Commit the result with the change that explains it.
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


def main() -> int:
    from cpsnake import cli, io, weights
    from cpsnake.provenance import sha256

    images = sorted(p for p in DEMO.iterdir() if p.suffix == ".tif")
    with tempfile.TemporaryDirectory() as tmp:
        if cli.main(["segment", *map(str, images), "--out", tmp]) != 0:
            return 1
        (OUT / "masks").mkdir(parents=True, exist_ok=True)
        counts = {}
        for img in images:
            labels, _ = io.read_labels(Path(tmp) / "masks" / f"{img.stem}.tif")
            counts[img.stem] = int(labels.max())
            tifffile.imwrite(OUT / "masks" / f"{img.stem}.tif", labels.astype("uint16"), compression="zlib")
    doc = {"model": "nuclei_small", "sha256": sha256(weights.resolve("nuclei_small")), "cells": counts}
    (OUT / "counts.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
