"""``cpsnake segment IMAGE... --out DIR``: the whole chain in one process, for users without Snakemake.

Usage::

    cpsnake segment img1.tif img2.png --out results [--model nuclei_small] [--diameter 17] [--channels 0,1]

For each image NAME (file name without extension; ``.ome.tif`` counts as one extension) it writes the
same files, under the same names, as the workflow:

* ``DIR/masks/NAME.tif``         label image, uint16 ImageJ TIFF with the input's pixel size and unit
* ``DIR/rois/NAME.zip``          ImageJ ROI set, pixel-exact (see :mod:`cpsnake.rois`)
* ``DIR/measurements/NAME.csv``  per-cell table with ImageJ's Measure definitions (:mod:`cpsnake.measure`)
* ``DIR/overlays/NAME.png``      QC picture, label outlines over the image
* ``DIR/provenance/NAME.json``   what was done: versions, model name and sha256, every parameter, the
  normalization values used, the number of cells and the seconds each step took

The model is loaded once. The steps are the same functions the per-step commands call
(``normalize`` -> ``infer`` -> ``reconstruct`` -> ``rois`` / ``measure`` / ``overlay``), so a chain of
``cpsnake <step>`` commands gives the same files. A bad image fails alone: its error is printed as one
line, nothing is written under its final names, the other images go on, and the exit code is 1.
Two inputs that map to the same NAME (``a.tif`` and ``other/a.png``) would overwrite each other's files:
the call is refused before anything is loaded. ``--max-pixels N`` bounds every image (see
:mod:`cpsnake.limits`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cpsnake.errors import CpsnakeError, guard

__all__ = ["DEFAULT_MODEL", "segment_image", "main"]

DEFAULT_MODEL = "nuclei_small"


def segment_image(
    net,
    img: np.ndarray,
    *,
    channels: list[int] | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    low_high=None,
    invert: bool = False,
    tile_size: int = 0,
    diameter: float | None = None,
    augment: bool = False,
    tile_overlap: float = 0.1,
    batch_size: int = 8,
    device=None,
    dtype=None,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    niter: int | None = None,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
    reconstruct_device=None,
    max_pixels: int | None = None,
    size_params: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Normalize, run the network and reconstruct masks for one image.

    Parameters
    ----------
    net : callable
        (B, 3, 256, 256) -> (B, 3, 256, 256) network, e.g. :func:`cpsnake.models.load_model`'s.
    img : (C, Y, X) ndarray
        The raw image, any numeric dtype.
    reconstruct_device : torch device, optional
        Where the reconstruction runs (:func:`cpsnake.reconstruct.compute_masks`); None: the CPU path.
    diameter : float, ``"auto"`` or None
        ``"auto"``: estimated by the U-Net's size model ``size_params`` (:mod:`cpsnake.size`); the estimate
        is returned as ``normalization["diameter_estimated"]``.
    Other parameters : as ``cpsnake normalize``, ``cpsnake infer`` and ``cpsnake reconstruct``;
        ``max_pixels`` bounds the image resized for ``diameter`` (see :mod:`cpsnake.limits`).

    Returns
    -------
    labels : (Y, X) int32 ndarray
    flows : (3, Y, X) float32 ndarray (dY, dX, cellprob)
    normalization : dict, the values used (as ``cpsnake normalize`` writes beside its output)
    seconds : dict, wall time of each step
    """
    from cpsnake.infer import predict
    from cpsnake.normalize import normalize, select_channels
    from cpsnake.infer import tiling
    from cpsnake.reconstruct import compute_masks

    t0 = time.perf_counter()
    data, record = normalize(
        select_channels(img, channels), percentiles=percentiles, low_high=low_high, invert=invert, tile_size=tile_size
    )
    if diameter == "auto":
        from cpsnake.infer import auto_diameter

        diameter = auto_diameter(net, data, None, None, dict(batch_size=batch_size, tile_overlap=tile_overlap,
                                 augment=augment, device=device, dtype=dtype), params=size_params)
        record["diameter_estimated"] = diameter
    t1 = time.perf_counter()
    flows = predict(
        net, data, diameter=diameter, batch_size=batch_size, tile_overlap=tile_overlap, augment=augment,
        device=device, dtype=dtype, max_pixels=max_pixels,
    )
    t2 = time.perf_counter()
    labels = compute_masks(
        flows,
        cellprob_threshold=cellprob_threshold,
        flow_threshold=flow_threshold,
        niter=niter or int(200 / (tiling(net).scale(diameter) or 1.0)),  # cellpose: 200 / the network's scale
        min_size=min_size,
        max_size_fraction=max_size_fraction,
        device=reconstruct_device,
    )
    t3 = time.perf_counter()
    return labels, flows, record, {"normalize": t1 - t0, "infer": t2 - t1, "reconstruct": t3 - t2}


def _parser() -> argparse.ArgumentParser:
    from cpsnake import infer, normalize, reconstruct

    p = argparse.ArgumentParser(prog="cpsnake segment", description="Segment images in one process (normalize, infer, reconstruct, then ROIs, measurements, overlay and provenance), for users without Snakemake.")
    p.add_argument("images", nargs="+", type=Path, help="2-D images: TIFF / OME-TIFF, PNG or JPEG")
    p.add_argument("--out", required=True, type=Path, help="output folder (masks/, rois/, measurements/, overlays/, provenance/)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or weights file (default {DEFAULT_MODEL})")
    p.add_argument("--cache-dir", default=None, help="weights cache folder (default $CPSNAKE_CACHE or ~/.cache/cpsnake)")
    for title, module in (("normalize", normalize), ("infer", infer), ("reconstruct", reconstruct)):
        module.add_options(p.add_argument_group(f"{title} options (as `cpsnake {title}`)"))
    from cpsnake import limits

    limits.add_option(p)
    return p


def check_names(images: list[Path]) -> None:
    """Refuse two inputs that would write the same output files (same name without extension)."""
    from cpsnake.samples import name_clash

    clash = name_clash(images)
    if clash:
        first, second, name = clash
        raise CpsnakeError(
            f"{first} and {second}: both map to the output name {name!r} (masks/{name}.tif, rois/{name}.zip, ...), "
            "so the second would overwrite the first; expected one input per name; rename one of them, or "
            "segment them in separate calls with different --out folders"
        )


def _one(path: Path, net, args, opts: dict, model_info: dict) -> int:
    """Segment one image and write its files; return its number of cells."""
    from cpsnake import __version__, io, limits, measure, overlay, rois
    from cpsnake.samples import sample_name as image_name

    img, meta = io.read_image(path, max_pixels=args.max_pixels)
    if img.ndim != 3:
        raise CpsnakeError(
            f"{path}: found a stack of {img.shape[0]} planes (axes {meta['axes']!r}); expected a 2-D image; "
            "save each plane as its own file (Fiji: Image > Stacks > Stack to Images)"
        )
    limits.check_min_side(path, img.shape)
    try:
        labels, flows, record, seconds = segment_image(net, img, max_pixels=args.max_pixels, **opts)
    except CpsnakeError as exc:
        raise CpsnakeError(f"{path}: {exc}") from None
    name, out = image_name(path), args.out
    cal = {"pixel_size": meta["pixel_size"], "unit": meta["unit"]}
    t = time.perf_counter()
    io.write_labels(out / "masks" / f"{name}.tif", labels, **cal)
    rois.write_rois(out / "rois" / f"{name}.zip", rois.labels_to_rois(labels))
    rows = measure.measure_labels(labels, img, pixel_size=meta["pixel_size"], image_name=path.name, flows=flows)
    measure.write_table(out / "measurements" / f"{name}.csv", rows, measure.columns(img.shape[0], quality=True))
    overlay.write_png(out / "overlays" / f"{name}.png", overlay.render(img, labels))
    seconds["outputs"] = time.perf_counter() - t
    n = int(labels.max())
    doc = {
        "cpsnake_version": __version__,
        "step": "segment",
        "image": {"path": str(path), "shape": list(meta["shape"]), "dtype": meta["dtype"], "axes": meta["axes"], **cal,
                  "calibration_problem": meta["calibration_problem"]},
        "model": model_info,
        "parameters": {k: v for k, v in opts.items() if k not in ("device", "dtype", "reconstruct_device", "size_params")},
        "device": str(opts["device"]),
        "precision": str(opts["dtype"]).replace("torch.", ""),
        "normalization": record,
        "cells": n,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    with io.atomic_output(out / "provenance" / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")
    return n


@guard("segment")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cpsnake import infer, normalize, reconstruct, statefile, weights
    from cpsnake.errors import collected_warnings, one_line
    from cpsnake.provenance import sha256

    # every check that needs no torch and no image first: options, output names, the weights file
    opts = normalize.options(args)
    infer.check_options(args)
    ropts = reconstruct.options(args)
    reconstruct_device = ropts.pop("device")  # a GPU's, else None (the CPU path); infer's is opts["device"]
    opts.update(ropts, reconstruct_device=reconstruct_device)
    check_names(args.images)
    path = weights.resolve(args.model, cache_dir=args.cache_dir, progress=True)
    statefile.check(path)
    opts.update(infer.options(args))
    from cpsnake import models

    net = models.load_model(path, device=str(opts["device"]))
    if opts["diameter"] == "auto":
        from cpsnake.size import size_model_for

        opts["size_params"] = size_model_for(net, path, args.size_model)
    family = models.family_of_net(net)
    model_info = {"name": args.model, "file": str(path), "sha256": sha256(path), "family": family}
    failed = 0
    for image in args.images:
        try:
            with collected_warnings() as notes:  # an image's warnings, printed only if it succeeds
                n = _one(image, net, args, opts, model_info)
            for note in notes:
                print(f"cpsnake segment: warning: {note}", file=sys.stderr)
            print(f"{image}: {n} cells", file=sys.stderr)
        except CpsnakeError as exc:
            failed += 1
            print(f"cpsnake segment: error: {one_line(exc)}", file=sys.stderr)
    if failed:
        print(f"cpsnake segment: {failed} of {len(args.images)} images failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
