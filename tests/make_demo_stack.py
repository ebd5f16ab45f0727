"""Write resources/demo/stacks/nuclei_zstack.tif: a small Z stack made from a real CC0 demo image (synthetic in depth).

Run from the repository root (needs ../shared/data/nuclei, the project's annotated data)::

    .venv/bin/python tests/make_demo_stack.py

The stack is *synthetic in Z*: the 128 x 128 top-left crop of the demo image
``dsb2018_0bf4b144167694b6.tif`` (BBBC038v1, CC0) and its annotated masks are turned into 12 planes by
``tests/synthetic.py``'s ``pseudo_stack``: every nucleus becomes an ellipsoid-like body (its real 2-D pixels,
shrunk above and below its random centre depth) with a z step of 2 px (so ``--anisotropy 2``). The file is an
ImageJ hyperstack (axes ZYX, spacing 2, pixels uncalibrated); beside it ``nuclei_zstack_truth.tif`` holds the
bodies' labels. Re-running the script gives the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "nuclei" / "val"
OUT = ROOT / "resources" / "demo" / "stacks"
NAME = "dsb2018_0bf4b144167694b6"


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import pseudo_stack

    img = tifffile.imread(VAL / "images" / f"{NAME}.tif")[:128, :128]
    lab = tifffile.imread(VAL / "masks" / f"{NAME}.tif")[:128, :128]
    stack, truth = pseudo_stack(img, lab, planes=12, z_step=2.0, seed=1)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"axes": "ZYX", "spacing": 2.0}
    tifffile.imwrite(OUT / "nuclei_zstack.tif", stack, imagej=True, metadata=meta, compression="zlib")
    tifffile.imwrite(
        OUT / "nuclei_zstack_truth.tif", truth.astype(np.uint16), imagej=True, metadata=meta, compression="zlib"
    )
    print(f"{OUT / 'nuclei_zstack.tif'}: {stack.shape} {stack.dtype}, {int(truth.max())} bodies", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
