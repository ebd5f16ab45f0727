"""``cpsnake segment IMAGE... --out DIR``: the whole chain in one process, for users without Snakemake.

Usage::

    cpsnake segment img1.tif img2.png --out results [--model nuclei_small] [--diameter 17] [--channels 0,1]

For each image NAME (file name without extension; ``.ome.tif`` counts as one extension) it writes the
same files, under the same names, as the workflow:

* ``DIR/masks/NAME.tif``         label image, uint16 ImageJ TIFF with the input's pixel size and unit
  (``--ome-zarr``: also ``DIR/masks/NAME.zarr``, OME-Zarr labels, see :mod:`cpsnake.io.ngff`)
* ``DIR/rois/NAME.zip``          ImageJ ROI set, pixel-exact (see :mod:`cpsnake.export.rois`)
* ``DIR/measurements/NAME.csv``  per-cell table with ImageJ's Measure definitions (:mod:`cpsnake.export.measure`)
* ``DIR/overlays/NAME.png``      QC picture, label outlines over the image
* ``DIR/provenance/NAME.json``   what was done: versions, model name and sha256, every parameter, the
  normalization values used, the number of cells and the seconds each step took

The model is loaded once. The steps are the same functions the per-step commands call
(``normalize`` -> ``infer`` -> ``reconstruct`` -> ``rois`` / ``measure`` / ``overlay``), so a chain of
``cpsnake <step>`` commands gives the same files. A bad image fails alone: its error is printed as one
line, nothing is written under its final names, the other images go on, and the exit code is 1. An image's
files are written all or none (:func:`cpsnake.io.outputs.all_or_nothing`: a full disk leaves none of them), and
an output folder that cannot be written is one line before the model loads.
Stacks (TIFF with Z and/or T axes, see :func:`cpsnake.io.inputs.read_image`) go through :mod:`cpsnake.stacks.stack`:
plane
by plane by default, ``--stitch-threshold T`` (planes linked into 3-D objects) or ``--do-3d`` (3-D flows) for Z
stacks, ``--track`` to link the frames of a time series; a T x Z hyperstack is segmented frame by frame. The
label file is then an ImageJ hyperstack with the stack's z step and frame interval, the ROI set has one ROI
per object and plane (``0042-z03``, ``0042-t02``, ``0042-t02-z03``), the table one row per 3-D object
(:func:`cpsnake.export.measure3d.measure_stack`; per object and slice when segmented plane by plane, per object
and frame for time series), and the overlay shows the middle plane (of the first frame).
A 2-D image above 4096 x 4096 px is segmented block by block (``--block-size``, :mod:`cpsnake.engine.blocks`), with
the same labels as the whole image at once; a TIFF (or an OME-Zarr folder, always) is then read region by
region (:func:`cpsnake.io.inputs.region_input` decides, :mod:`cpsnake.io.regions` reads: only the normalization
values come from a pass over the whole file), the label image is built in a Zarr array on disk, and the files
are written window by window from it (:mod:`cpsnake.export.blockout`, the same bytes as from the whole image).
Two inputs that map to the same NAME (``a.tif`` and ``other/a.png``) would overwrite each other's files:
the call is refused before anything is loaded. ``--max-pixels N`` bounds every image (see
:mod:`cpsnake.io.limits`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cpsnake.engine.blocks import AUTO_WHOLE
from cpsnake.engine.streamnorm import stream_values
from cpsnake.errors import CpsnakeError, guard
from cpsnake.io import files, inputs, regions

__all__ = ["DEFAULT_MODEL", "segment_image", "segment_regions", "check_names", "check_input", "main"]

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
    block: int = 0,
    halo: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict, dict]:
    """Normalize, run the network and reconstruct masks for one image.

    Parameters
    ----------
    net : callable
        (B, 3, 256, 256) -> (B, 3, 256, 256) network, e.g. :func:`cpsnake.models.registry.load_model`'s.
    img : (C, Y, X) ndarray
        The raw image, any numeric dtype.
    reconstruct_device : torch device, optional
        Where the reconstruction runs (:func:`cpsnake.engine.reconstruct.compute_masks`); None: the CPU path.
    diameter : float, ``"auto"`` or None
        ``"auto"``: estimated by the U-Net's size model ``size_params`` (:mod:`cpsnake.engine.size`); the estimate
        is returned as ``normalization["diameter_estimated"]``.
    block, halo : int
        ``block > 0``: network and reconstruction block by block (:mod:`cpsnake.engine.blocks`, cores of ``block``
        px with ``halo`` px of context, default :func:`cpsnake.engine.blocks.default_halo`); the labels equal the
        whole image's, no flows are returned (None) and ``normalization["blocks"]`` holds the blocks' report.
    Other parameters : as ``cpsnake normalize``, ``cpsnake infer`` and ``cpsnake reconstruct``;
        ``max_pixels`` bounds the image resized for ``diameter`` (see :mod:`cpsnake.io.limits`).

    Returns
    -------
    labels : (Y, X) int32 ndarray
    flows : (3, Y, X) float32 ndarray (dY, dX, cellprob)
    normalization : dict, the values used (as ``cpsnake normalize`` writes beside its output)
    seconds : dict, wall time of each step
    """
    from cpsnake.engine.infer import predict, tiling
    from cpsnake.engine.normalize import normalize, select_channels
    from cpsnake.engine.reconstruct import compute_masks

    t0 = time.perf_counter()
    data, record = normalize(
        select_channels(img, channels), percentiles=percentiles, low_high=low_high, invert=invert, tile_size=tile_size
    )
    if diameter == "auto":
        from cpsnake.engine.size import auto_diameter

        diameter = auto_diameter(
            net,
            data,
            None,
            None,
            dict(batch_size=batch_size, tile_overlap=tile_overlap, augment=augment, device=device, dtype=dtype),
            params=size_params,
        )
        record["diameter_estimated"] = diameter
    t1 = time.perf_counter()
    if block:
        labels, record["blocks"] = _blocks(
            net,
            lambda y0, y1, x0, x1: data[:, y0:y1, x0:x1],
            data.shape[1:],
            channels=data.shape[0],
            block=block,
            halo=halo,
            diameter=diameter,
            tile_overlap=tile_overlap,
            augment=augment,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            cellprob_threshold=cellprob_threshold,
            flow_threshold=flow_threshold,
            niter=niter,
            min_size=min_size,
            max_size_fraction=max_size_fraction,
        )
        return labels, None, record, {"normalize": t1 - t0, "blocks": time.perf_counter() - t1}
    flows = predict(
        net,
        data,
        diameter=diameter,
        batch_size=batch_size,
        tile_overlap=tile_overlap,
        augment=augment,
        device=device,
        dtype=dtype,
        max_pixels=max_pixels,
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


def _blocks(net, read, shape, *, halo: int | None, diameter, **opts) -> tuple[np.ndarray, dict]:
    """:func:`cpsnake.engine.blocks.segment_blocks` with the default halo, warning when objects may be cut."""
    from cpsnake.engine.blocks import default_halo, halo_advice, segment_blocks

    halo = default_halo(diameter) if halo is None else halo
    labels, report = segment_blocks(net, read, shape, halo=halo, diameter=diameter, **opts)
    if halo_advice(report):
        import warnings

        from cpsnake.errors import CpsnakeWarning

        warnings.warn(halo_advice(report), CpsnakeWarning, stacklevel=3)
    return labels, report


def segment_regions(
    net,
    image,
    *,
    block: int,
    halo: int | None = None,
    channels: list[int] | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    low_high=None,
    invert: bool = False,
    tile_size: int = 0,
    diameter: float | None = None,
    labels=None,
    **opts,
) -> tuple[np.ndarray, dict, dict]:
    """Segment a :class:`cpsnake.io.regions.RegionImage` block by block without reading it whole.

    The normalization values come from one streaming pass (:func:`cpsnake.engine.streamnorm.stream_values`, equal to
    :func:`cpsnake.engine.normalize.normalize`'s on the whole image); each block reads and scales only its own
    region. ``labels``: where the label image is built (see :class:`cpsnake.engine.blocks.Assembler`). Other
    options as :func:`segment_image` (``--tile-norm`` and ``--diameter auto`` need the whole image: refused).

    Returns labels ``(Y, X)`` int32 (``labels`` itself when given), the normalization record (with the
    blocks' report under ``"blocks"``) and the seconds of each step.
    """
    from cpsnake.engine.normalize import scale

    if tile_size:
        raise CpsnakeError(
            f"--tile-norm {tile_size} with an image read block by block; expected percentile or "
            "--low-high normalization for block-wise images; leave out --tile-norm, or give "
            "--block-size 0 to load the image whole"
        )
    if diameter == "auto":
        raise CpsnakeError(
            "--diameter auto with an image read block by block; expected a number (the size model "
            "needs the whole image); give --diameter D, or --block-size 0 to load the image whole"
        )
    t0 = time.perf_counter()
    record = stream_values(
        regions.bands(image),
        image.shape,
        image.dtype,
        channels,
        percentiles=percentiles,
        low_high=low_high,
        invert=invert,
    )
    picked = list(channels) if channels is not None else list(range(image.shape[0]))
    t1 = time.perf_counter()
    out, record["blocks"] = _blocks(
        net,
        lambda y0, y1, x0, x1: scale(image.read(y0, y1, x0, x1)[picked], record),
        image.shape[1:],
        channels=len(picked),
        block=block,
        halo=halo,
        diameter=diameter,
        labels=labels,
        **opts,
    )
    return out, record, {"normalize": t1 - t0, "blocks": time.perf_counter() - t1}


def _parser() -> argparse.ArgumentParser:
    from cpsnake.steps import infer, normalize, reconstruct

    p = argparse.ArgumentParser(
        prog="cpsnake segment",
        description="Segment images in one process (normalize, infer, reconstruct, then ROIs, measurements, "
        "overlay and provenance), for users without Snakemake.",
    )
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="2-D images (TIFF / OME-TIFF / BigTIFF, PNG or JPEG; OME-Zarr folders) or stacks (TIFF with "
        "Z and/or T axes)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (masks/, rois/, measurements/, overlays/, provenance/)"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or weights file (default {DEFAULT_MODEL})")
    p.add_argument(
        "--cache-dir", default=None, help="weights cache folder (default $CPSNAKE_CACHE or ~/.cache/cpsnake)"
    )
    for title, module in (("normalize", normalize), ("infer", infer), ("reconstruct", reconstruct)):
        module.add_options(p.add_argument_group(f"{title} options (as `cpsnake {title}`)"))
    from cpsnake.steps import stack_options

    stack_options.add_options(
        p.add_argument_group("stack options (Z stacks and time series; see cpsnake.stacks.stack)")
    )
    from cpsnake.bounds import option

    p.add_argument(
        "--block-size",
        type=option("--block-size"),
        default=None,
        metavar="N",
        help="segment 2-D images in blocks of N px with context (cpsnake.engine.blocks; labels equal the whole "
        "image's); 0: the whole image at once; default: whole up to 4096 x 4096 px, else 2048",
    )
    p.add_argument(
        "--block-halo",
        type=option("--block-halo"),
        default=None,
        metavar="H",
        help="context around each block in px (default 96, or 3 x --diameter): more than the largest "
        "cell's radius; objects that may be cut are reported",
    )
    p.add_argument(
        "--ome-zarr",
        action="store_true",
        help="also write masks/NAME.zarr: the labels as OME-Zarr (NGFF 0.5 labels group, multiscale "
        "pyramid; cpsnake.io.ngff) for napari, QuPath and other NGFF readers (2-D images)",
    )
    p.add_argument(
        "--geojson",
        action="store_true",
        help="also write geojson/NAME.geojson: the cells as QuPath GeoJSON with their measurements (2-D images)",
    )
    from cpsnake.io import limits

    limits.add_option(p)
    return p


def check_names(images: list[Path]) -> None:
    """Refuse two inputs that would write the same output files (same name without extension)."""
    from cpsnake.run.samples import name_clash

    clash = name_clash(images)
    if clash:
        first, second, name = clash
        raise CpsnakeError(
            f"{first} and {second}: both map to the output name {name!r} (masks/{name}.tif, rois/{name}.zip, ...), "
            "so the second would overwrite the first; expected one input per name; rename one of them, or "
            "segment them in separate calls with different --out folders"
        )


def check_input(path: Path, args, sopts: dict) -> None:
    """One input's existence, kind, header and size, checked before the model loads (no pixel is decoded;
    the readers check again when the image is segmented): a missing path, a FIFO or other non-regular
    file, a file that is not an image, a header that cannot be read, more samples than ``--max-pixels``,
    a side under :data:`cpsnake.io.limits.MIN_SIDE`, and with ``--do-3d`` a stack that ``--anisotropy`` would
    resize beyond ``--max-pixels`` (:func:`cpsnake.io.limits.check_stack_3d`) are each a CpsnakeError."""
    from cpsnake.io import limits

    head = inputs.read_header(path)  # regular file (os.stat first), image format, header
    planes, channels = head["planes"], head["channels_in_file"]
    shape = (*([planes] if planes > 1 else []), head["height"], head["width"], *([channels] if channels > 1 else []))
    limits.check_samples(path, shape, limit=args.max_pixels)
    limits.check_min_side(path, (head["height"], head["width"]))
    if sopts["mode"] == "3d" and head["planes"] > 1:
        shape = (_depth(path, head["planes"]), head["channels_in_file"], head["height"], head["width"])
        limits.check_stack_3d(
            path, shape, anisotropy=sopts["anisotropy"], diameter=args.diameter, limit=args.max_pixels
        )


def _depth(path: Path, planes: int) -> int:
    """Z planes of a stack (a T x Z hyperstack is segmented frame by frame): the TIFF series' Z axis, else
    all its ``planes``."""
    if inputs.file_format(path) != "tiff":
        return planes
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return int(series.shape[series.axes.index("Z")]) if "Z" in series.axes else planes
    except Exception:  # read_header read this header: any other failure leaves the count as it is
        return planes


def _segment_region_file(path: Path, net, region, args, opts: dict, keep):
    """Segment a 2-D :class:`cpsnake.io.regions.RegionImage`: block by block from its regions, the label image
    built in a Zarr array in a temporary folder that ``keep`` (an ExitStack) removes; or whole with
    ``--block-size 0``.

    Returns labels (the Zarr array in blocks), flows and the image (C, Y, X) (both None in blocks: the outputs
    are then written window by window, :mod:`cpsnake.export.blockout`), the normalization record, seconds and
    parameters."""
    import zarr

    from cpsnake.engine.blocks import auto_block_size
    from cpsnake.io import limits
    from cpsnake.io.outputs import scratch_folder

    limits.check_samples(path, region.meta["shape"], limit=args.max_pixels)
    limits.check_min_side(path, region.shape)
    C, Y, X = region.shape
    block = args.block_size if args.block_size is not None else auto_block_size((Y, X))
    if not block:
        img = region.read(0, Y, 0, X)
        labels, flows, record, seconds = segment_image(net, img, max_pixels=args.max_pixels, block=0, **opts)
        return labels, flows, img, record, seconds, {"block_size": 0, "block_halo": None, "read": "whole"}
    tmp = keep.enter_context(scratch_folder("cpsnake-labels-"))
    store = zarr.create_array(f"{tmp}/labels.zarr", shape=(Y, X), chunks=(1024, 1024), dtype="int32", fill_value=0)
    ropts = {k: v for k, v in opts.items() if k != "size_params"}
    labels, record, seconds = segment_regions(net, region, block=block, halo=args.block_halo, labels=store, **ropts)
    params = {"block_size": block, "block_halo": record["blocks"]["halo"], "read": "regions"}
    return labels, None, None, record, seconds, params


def _one(path: Path, net, args, opts: dict, model_info: dict, sopts: dict) -> int:
    """Segment one image or stack and write its files; return its number of objects."""
    import contextlib

    from cpsnake.io.outputs import all_or_nothing

    with contextlib.ExitStack() as keep:
        keep.enter_context(all_or_nothing())  # its files all, or none, under their final names
        return _segment_and_write(path, net, args, opts, model_info, sopts, keep)


def _segment_and_write(path: Path, net, args, opts: dict, model_info: dict, sopts: dict, keep) -> int:
    from cpsnake import __version__
    from cpsnake.engine.blocks import auto_block_size
    from cpsnake.io import limits
    from cpsnake.io.outputs import atomic_output
    from cpsnake.run.samples import sample_name as image_name

    region = inputs.region_input(path, block_size=args.block_size, whole_up_to=AUTO_WHOLE, max_pixels=args.max_pixels)
    if region is None:
        img, meta = inputs.read_image(path, max_pixels=args.max_pixels)
        limits.check_min_side(path, img.shape)
        axes = meta["stack_axes"]
    else:
        keep.callback(region.close)
        meta, axes = region.meta, ""
    try:
        if axes:
            labels, record, seconds, params = _segment_stack(path, net, img, axes, opts, sopts, args.max_pixels)
        else:
            if sopts["mode"] != "planes" or sopts["track"]:
                flag = (
                    "--do-3d"
                    if sopts["mode"] == "3d"
                    else "--stitch-threshold"
                    if sopts["mode"] == "stitch"
                    else "--track"
                )
                raise CpsnakeError(
                    f"found a 2-D image (axes {meta['axes']!r}) given {flag}; expected a stack with Z (or T "
                    f"for --track) planes; leave out {flag}, or save the stack with its axes named"
                )
            if region is not None:
                labels, flows, img, record, seconds, params = _segment_region_file(path, net, region, args, opts, keep)
            else:
                block = args.block_size if args.block_size is not None else auto_block_size(img.shape[1:])
                labels, flows, record, seconds = segment_image(
                    net, img, max_pixels=args.max_pixels, block=block, halo=args.block_halo, **opts
                )
                params = {"block_size": block, "block_halo": record["blocks"]["halo"] if block else None}
    except CpsnakeError as exc:
        msg = str(exc)
        raise CpsnakeError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from None
    name, out = image_name(path), args.out
    cal = {"pixel_size": meta["pixel_size"], "unit": meta["unit"]}
    t = time.perf_counter()
    if axes:
        if args.geojson:
            from cpsnake.export.geojson import warn_stack

            warn_stack(path)
        if args.ome_zarr:
            import warnings

            from cpsnake.errors import CpsnakeWarning

            warnings.warn(
                f"{path}: --ome-zarr writes 2-D label images; this stack's labels are in the TIFF only",
                CpsnakeWarning,
                stacklevel=2,
            )
        _stack_outputs(out, name, path, img, meta, labels, sopts)
        n = int(np.unique(labels[labels > 0]).size)
    elif img is None:  # block by block from regions: the labels are on disk, the image is read by region
        from cpsnake.export.blockout import write_outputs

        n = record["blocks"]["objects"]
        write_outputs(out, name, path, region, labels, n, meta, geojson=args.geojson, ome_zarr=args.ome_zarr)
    else:
        _image_outputs(out, name, path, img, meta, labels, flows, geojson=args.geojson, ome_zarr=args.ome_zarr)
        n = int(labels.max())
    seconds["outputs"] = time.perf_counter() - t
    skip = ("device", "dtype", "reconstruct_device", "size_params")
    doc = {
        "cpsnake_version": __version__,
        "step": "segment",
        "image": {
            "path": str(path),
            "shape": list(meta["shape"]),
            "dtype": meta["dtype"],
            "axes": meta["axes"],
            **cal,
            "stack_axes": axes,
            "z_step": meta["z_step"],
            "frame_interval": meta["frame_interval"],
            "calibration_problem": meta["calibration_problem"],
        },
        "model": model_info,
        "parameters": {**{k: v for k, v in opts.items() if k not in skip}, **params},
        "device": str(opts["device"]),
        "precision": str(opts["dtype"]).replace("torch.", ""),
        "normalization": record,
        "cells": n,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    with atomic_output(out / "provenance" / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False, default=str) + "\n")
    return n


def _image_outputs(
    out: Path, name: str, path: Path, img, meta: dict, labels, flows, *, geojson: bool = False, ome_zarr: bool = False
) -> None:
    from cpsnake.export import measure, overlay, rois
    from cpsnake.export.table import write_table
    from cpsnake.io.labels import write_labels

    write_labels(out / "masks" / f"{name}.tif", labels, pixel_size=meta["pixel_size"], unit=meta["unit"])
    if ome_zarr:
        from cpsnake.io.ngff import write_label_zarr

        write_label_zarr(out / "masks" / f"{name}.zarr", labels, pixel_size=meta["pixel_size"], unit=meta["unit"])
    rois.write_rois(out / "rois" / f"{name}.zip", rois.labels_to_rois(labels))
    table = measure.measure_labels(labels, img, pixel_size=meta["pixel_size"], image_name=path.name, flows=flows)
    write_table(out / "measurements" / f"{name}.csv", table)  # blocks: no whole-image flows
    if geojson:
        from cpsnake.export.geojson import feature_collection, table_rows, write_geojson

        write_geojson(
            out / "geojson" / f"{name}.geojson",
            feature_collection(labels, rows=table_rows(table), image_name=path.name),
        )
    overlay.write_png(out / "overlays" / f"{name}.png", overlay.render(img, labels))


def _segment_stack(path: Path, net, img, axes: str, opts: dict, sopts: dict, max_pixels):
    """Labels ``(Z|T, Y, X)`` or ``(T, Z, Y, X)`` of a stack (see :mod:`cpsnake.stacks.stack`), frames linked with
    --track."""
    import sys

    from cpsnake.stacks.stack import segment_stack
    from cpsnake.stacks.track import track_frames

    mode = sopts["mode"]
    if axes == "T" and mode != "planes":
        flag = "--do-3d" if mode == "3d" else "--stitch-threshold"
        raise CpsnakeError(
            f"found a time series of 2-D frames (no Z axis) given {flag}; expected a Z stack for {flag}; "
            "leave it out (frames are segmented one by one; --track links them), or save the planes "
            "as Z if they are depths (Fiji: Image > Properties, swap slices and frames)"
        )
    if "T" not in axes and sopts["track"]:
        raise CpsnakeError(
            "found a Z stack without a time axis given --track; expected a time series (T); leave out "
            "--track, or save the planes as frames (T) if they are time points"
        )
    if axes == "Z" and mode == "planes":
        print(
            f"{path}: {img.shape[0]} Z planes segmented one by one (no 3-D objects); give --do-3d or "
            "--stitch-threshold 0.25 for 3-D objects",
            file=sys.stderr,
        )
    keys = ("stitch_threshold", "anisotropy", "flow3d_smooth", "flow3d_threshold")
    kw = {k: sopts[k] for k in keys} | opts
    frames = list(img) if axes == "TZ" else [img]  # a T x Z hyperstack: frame by frame
    seconds: dict = {}
    out, records = [], []
    for k, frame in enumerate(frames):
        try:
            labels, _, record, secs = segment_stack(net, frame, mode=mode, max_pixels=max_pixels, **kw)
        except CpsnakeError as exc:
            raise CpsnakeError(f"frame {k + 1}: {exc}" if axes == "TZ" else str(exc)) from None
        out.append(labels)
        records.append(record)
        for step, v in secs.items():
            seconds[step] = seconds.get(step, 0.0) + v
    if axes == "TZ":
        from cpsnake.stacks.planes import offset_planes

        labels = np.stack(out)
        if not sopts["track"]:  # ids unique over the whole series
            labels = offset_planes(labels.reshape(labels.shape[0], -1, labels.shape[-1])).reshape(labels.shape)
    else:
        labels = out[0]
    if sopts["track"]:
        t0 = time.perf_counter()
        labels = track_frames(labels, sopts["track_threshold"])
        seconds["track"] = time.perf_counter() - t0
    params = {"stack_mode": mode, "track": sopts["track"]}
    params |= {"track_threshold": sopts["track_threshold"]} if sopts["track"] else {}
    params |= {k: sopts[k] for k in keys if mode == "3d" or k == "stitch_threshold" and mode == "stitch"}
    return labels, records[0] if len(records) == 1 else {"frames": records}, seconds, params


def _stack_outputs(out: Path, name: str, path: Path, img, meta: dict, labels, sopts: dict) -> None:
    """Label hyperstack, per-slice ROIs, the table (3-D objects: one row each; planes: one row per slice) and an
    overlay of the middle plane, for a stack ``img`` (Z|T, C, Y, X) or (T, Z, C, Y, X)."""
    from cpsnake.export import measure3d, overlay, rois
    from cpsnake.export.table import write_table
    from cpsnake.io.labels import write_labels

    axes = meta["stack_axes"]
    write_labels(
        out / "masks" / f"{name}.tif",
        labels,
        pixel_size=meta["pixel_size"],
        unit=meta["unit"],
        stack_axes=axes,
        z_step=meta["z_step"],
        frame_interval=meta["frame_interval"],
    )
    rois.write_rois(out / "rois" / f"{name}.zip", rois.labels_to_rois(labels, stack_axis="t" if axes == "T" else "z"))
    write_table(
        out / "measurements" / f"{name}.csv",
        measure3d.measure_stack(
            labels,
            img,
            axes=axes,
            objects_3d=sopts["mode"] != "planes",
            image_name=path.name,
            pixel_size=meta["pixel_size"],
            unit=meta["unit"],
            z_step=meta["z_step"],
        ),
    )
    first = img if axes != "TZ" else img[0]
    lab = labels if axes != "TZ" else labels[0]
    mid = first.shape[0] // 2
    overlay.write_png(out / "overlays" / f"{name}.png", overlay.render(first[mid], lab[mid]))


@guard("segment")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from cpsnake.bounds import check_halo
    from cpsnake.errors import collected_warnings, one_line
    from cpsnake.models import statefile, weights
    from cpsnake.steps import infer, normalize, reconstruct

    # every check that needs no torch first: options, output names, each input's header; then the weights file
    opts = normalize.options(args)
    infer.check_options(args)
    from cpsnake.steps import stack_options

    sopts = stack_options.options(args)
    reconstruct.check_options(args)
    check_halo(args.block_halo, args.block_size)
    check_names(args.images)
    failed, images = 0, []
    for image in args.images:
        try:
            with collected_warnings():  # dropped: the image's warnings come again when it is read
                check_input(image, args, sopts)
            images.append(image)
        except CpsnakeError as exc:
            failed += 1
            print(f"cpsnake segment: error: {one_line(exc)}", file=sys.stderr)
    if not images:  # nothing left to segment: the model is not loaded (nor torch imported)
        print(f"cpsnake segment: {failed} of {len(args.images)} images failed", file=sys.stderr)
        return 1
    from cpsnake.io.outputs import writable_folder

    writable_folder(args.out)  # a read-only or misnamed --out: one line before the model loads
    path = weights.resolve(args.model, cache_dir=args.cache_dir, progress=True)
    statefile.check(path)  # a hostile weights file is refused before torch is imported
    ropts = reconstruct.options(args)
    reconstruct_device = ropts.pop("device")  # a GPU's, else None (the CPU path); infer's is opts["device"]
    opts.update(ropts, reconstruct_device=reconstruct_device)
    opts.update(infer.options(args))
    from cpsnake.models.registry import family_of_net, load_model

    net = load_model(path, device=str(opts["device"]))
    if opts["diameter"] == "auto":
        from cpsnake.engine.size import size_model_for

        opts["size_params"] = size_model_for(net, path, args.size_model)
    family = family_of_net(net)
    digest = files.sha256(path, expected="an input of the run (image or model file)")
    model_info = {"name": args.model, "file": str(path), "sha256": digest, "family": family}
    for image in images:
        try:
            with collected_warnings() as notes:  # an image's warnings, printed only if it succeeds
                n = _one(image, net, args, opts, model_info, sopts)
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
