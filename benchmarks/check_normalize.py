"""Check: cpsnake's default normalization equals cellpose 4.2.1.1's ``normalize_img`` bit for bit on real images.

    python benchmarks/check_normalize.py [IMAGES_DIR ...]   (default ../shared/data/nuclei/val/images)

Each image is read with ``cpsnake.io.inputs.read_image`` (C, Y, X) and normalized both ways with the defaults
(percentiles 1 and 99 per channel); prints per image whether the float32 outputs are identical (and the
largest difference if not), then how many of how many images are bit-for-bit equal. Exit code 1 if any differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from cellpose.transforms import normalize_img

    from cpsnake.engine.normalize import normalize
    from cpsnake.io.inputs import read_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, default=[Path("../shared/data/nuclei/val/images")])
    args = ap.parse_args(argv)
    paths = sorted(p for d in args.folders for p in d.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))
    if not paths:
        print(f"no images in {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    equal = 0
    for path in paths:
        img, meta = read_image(path)
        ours, _ = normalize(img)
        ref = normalize_img(np.ascontiguousarray(np.moveaxis(img, 0, -1)), axis=-1).transpose(2, 0, 1)
        same = ours.dtype == ref.dtype and np.array_equal(ours, ref)
        equal += same
        note = "identical" if same else f"DIFFERENT, max abs diff {float(np.abs(ours - ref).max()):.3g}"
        print(f"{path.name}: {meta['dtype']} {tuple(img.shape)} {note}")
    print(f"{equal} of {len(paths)} images bit-for-bit equal to cellpose.transforms.normalize_img")
    return 0 if equal == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main())
