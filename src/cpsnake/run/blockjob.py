"""Block-wise segmentation as workflow jobs: the values, one job per block, and the assembly of the blocks.

An image whose samples-table row has ``block`` > 0 (see :mod:`cpsnake.run.samples`) goes through the workflow in
pieces, so one slide is segmented on many nodes with the labels of the one-process run
(``cpsnake segment --block-size N``, :func:`cpsnake.engine.blocks.segment_blocks`) bit for bit:

==================  ==========================================  =============================================
job                 writes                                      does
==================  ==========================================  =============================================
batch normalize     ``work/b/normalized/NAME.json`` and its      :func:`values_file`: the normalization values
                    manifest row (which the block jobs read)    from one streaming pass (no normalized image)
``cpsnake block``   ``work/b/blocks/NAME/K.npz``, one per       :func:`block_file`: pass 1 of block K (its
(one per block)     block of the grid                           flows from the whole image's tile grid, its
                                                                masks up to the flow-error check)
batch reconstruct   ``masks/NAME.tif``                          :func:`assemble_file`: pass 2 with the largest
                                                                diffusion length of all blocks, ownership,
                                                                the blocks assembled into one label image
==================  ==========================================  =============================================

The grid (cores of ``block`` px tiling the image, row-major) follows from the image's header, so the
workflow knows its block jobs when it builds the DAG. A block job's memory follows its block (its read
region, the tiles around it and its flows), not the image. The halo is ``--block-halo`` or the default for
the image's diameter (:func:`cpsnake.engine.blocks.default_halo`); each block file records its grid position and
halo, and the assembly refuses files of another grid.

A block job of an image that cannot be segmented this way (``--diameter auto`` or ``--tile-norm``, which
need the whole image; a corrupt chunk) writes its block file with the one-line reason instead of the
masks; the assembly then fails that image alone with that reason, as every batch step fails one image.

Usage (what the workflow's ``block`` rule runs)::

    cpsnake block SAMPLES.tsv BATCH NAME K --results DIR --model M [--block-halo H] [infer / reconstruct options]

The model loader (torch) and zarr are imported inside the functions that use them, so that a bad option or
table is refused without them.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from cpsnake import __version__
from cpsnake.bounds import check_halo, option
from cpsnake.engine.blocks import (
    Block,
    block_grid,
    check_block_size,
    default_halo,
    finish_blocks,
    halo_advice,
    seed_block,
)
from cpsnake.engine.normalize import scale
from cpsnake.engine.streamnorm import stream_values
from cpsnake.errors import CpsnakeError, CpsnakeWarning, guard, one_line
from cpsnake.export.blockout import write_label_tiff
from cpsnake.io import inputs, limits, regions
from cpsnake.io.ngff import write_label_zarr
from cpsnake.io.outputs import atomic_output, check_output, scratch_folder
from cpsnake.models import statefile, weights
from cpsnake.run import samples as sample_table
from cpsnake.run.batch import read_manifest
from cpsnake.run.jobmem import peak_mb
from cpsnake.run.layout import Paths
from cpsnake.steps import infer, reconstruct

__all__ = ["grid_of", "values_file", "block_file", "assemble_file", "main"]


def grid_of(height: int, width: int, block: int, halo: int = 0):
    """The block grid of an image of ``height`` x ``width`` px (:func:`cpsnake.engine.blocks.block_grid`)."""
    return block_grid((height, width), block, halo)


def values_file(
    src,
    out_json,
    *,
    channels=None,
    pixel_size=None,
    max_pixels=None,
    percentiles=(1.0, 99.0),
    low_high=None,
    invert: bool = False,
    tile_size: int = 0,
    **_,
) -> dict:
    """The normalization values of a 2-D image read region by region (:func:`cpsnake.engine.streamnorm.stream_values`),
    written to ``out_json`` in the form ``cpsnake normalize`` writes beside its image; returns the document."""
    if tile_size:
        raise CpsnakeError(
            f"{src}: --tile-norm {tile_size} with an image segmented block by block; expected "
            "percentile or --low-high normalization; set config blocks.size to 0 for this run, or "
            "leave out tile_norm"
        )
    with inputs.open_regions(src, max_pixels=max_pixels) as img:
        limits.check_min_side(src, img.shape)
        try:
            record = stream_values(
                regions.bands(img),
                img.shape,
                img.dtype,
                channels,
                percentiles=percentiles,
                low_high=low_high,
                invert=invert,
            )
        except CpsnakeError as exc:
            msg = str(exc)
            raise CpsnakeError(msg if msg.startswith(str(src)) else f"{src}: {msg}") from None
        meta = img.meta
        shape = img.shape
    cal, unit = meta["pixel_size"], meta["unit"]
    if pixel_size is not None:
        cal, unit = (float(pixel_size), float(pixel_size)), unit if unit not in (None, "pixel", "pixels") else "micron"
    used = list(channels) if channels is not None else list(range(shape[0]))
    record["per_channel"] = [{"channel": c, **e} for c, e in zip(used, record["per_channel"])]
    doc = {
        "cpsnake_version": __version__,
        "step": "normalize",
        "read": "regions",
        "source": {
            "path": str(src),
            "format": meta["format"],
            "shape": list(meta["shape"]),
            "dtype": meta["dtype"],
            "axes": meta["axes"],
            "dropped_alpha": meta["dropped_alpha"],
        },
        "pixel_size": list(cal) if cal else None,
        "unit": unit,
        "pixel_size_given": pixel_size is not None,
        "calibration_problem": meta["calibration_problem"],
        "channels": used,
        **record,
        "output": {"shape": [len(used), *shape[1:]], "axes": "CYX"},
    }
    with atomic_output(out_json) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return doc


def _record(doc: dict) -> dict:
    """The normalization record of a values document (per-channel entries without their ``channel`` key)."""
    rec = {k: doc[k] for k in ("mode", "arithmetic", "percentiles", "invert", "tile_size", "tile_smooth")}
    rec["per_channel"] = [{k: v for k, v in e.items() if k != "channel"} for e in doc["per_channel"]]
    return rec


def block_file(
    net,
    src,
    values: dict,
    out_npz,
    k: int,
    *,
    block: int,
    halo: int | None = None,
    diameter=None,
    cellprob_threshold: float = 0.0,
    niter: int | None = None,
    max_size_fraction: float = 0.4,
    flow_threshold: float = 0.4,
    max_pixels: int | None = None,
    **infer_opts,
) -> dict:
    """Pass 1 of block ``k`` of ``src`` (:func:`cpsnake.engine.blocks.seed_block`) with ``values`` (the document of
    :func:`values_file`);
    writes ``out_npz`` (masks ``seeds``, flows ``dP`` when the flow check is on, ``heat_niter``, the block's
    ``index``/``core``/``read``, ``shape``, ``block``, ``halo``) atomically; returns a summary dict."""
    if diameter == "auto":
        raise CpsnakeError(
            f"{src}: --diameter auto with an image segmented block by block; expected a number (the "
            "size model needs the whole image); give the diameter (config or sample sheet)"
        )
    check_block_size(net, block)
    record, picked = _record(values), values["channels"]
    halo = default_halo(diameter) if halo is None else int(halo)
    with inputs.open_regions(src, max_pixels=max_pixels) as img:
        shape = img.shape[1:]
        grid = grid_of(*shape, block, halo)
        if not 0 <= k < len(grid):
            raise CpsnakeError(
                f"{src}: block {k} requested, the grid of {block} px blocks has {len(grid)} (0-{len(grid) - 1})"
            )
        b = grid[k]
        seeds, dP, heat_niter = seed_block(
            net,
            lambda y0, y1, x0, x1: scale(img.read(y0, y1, x0, x1)[picked], record),
            shape,
            b,
            channels=len(picked),
            diameter=diameter,
            cellprob_threshold=cellprob_threshold,
            niter=niter,
            max_size_fraction=max_size_fraction,
            keep_flows=flow_threshold is not None and flow_threshold > 0,
            **infer_opts,
        )
    arrays = {
        "seeds": seeds,
        "heat_niter": np.int64(heat_niter),
        "index": np.asarray(b.index),
        "core": np.asarray(b.core),
        "read": np.asarray(b.read),
        "shape": np.asarray(shape),
        "block": np.int64(block),
        "halo": np.int64(halo),
    }
    if dP is not None:
        arrays["dP"] = dP
    with atomic_output(out_npz) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return {"block": k, "read": list(b.read), "objects": int(seeds.max()), "heat_niter": heat_niter}


def _failed_block(out_npz, reason: str) -> None:
    with atomic_output(out_npz) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, error=np.asarray(reason))


def assemble_file(
    files: list[Path],
    out_tif,
    *,
    shape: tuple[int, int],
    block: int,
    flow_threshold: float = 0.4,
    min_size: int = 15,
    device=None,
    pixel_size=None,
    unit=None,
    ome_zarr=None,
    **_,
) -> dict:
    """Pass 2 over the block files of one image and their objects assembled into one label image
    (:func:`cpsnake.engine.blocks.finish_blocks`, built in a Zarr array in a temporary folder), then the label
    TIFF ``out_tif`` (and OME-Zarr labels at ``ome_zarr``) written band by band; returns the blocks' report. A
    block file that holds an error fails the image with its reason."""
    import zarr

    heads = []
    for k, f in enumerate(files):
        with np.load(f, allow_pickle=False) as z:
            if "error" in z.files:
                raise CpsnakeError(str(z["error"]))
            head = {key: z[key] for key in ("heat_niter", "index", "core", "read", "shape", "block", "halo")}
        if tuple(head["shape"]) != tuple(shape) or int(head["block"]) != block:
            raise CpsnakeError(
                f"{f}: block file of an image of {tuple(head['shape'])} px in {int(head['block'])} px "
                f"blocks, expected {tuple(shape)} px in {block} px blocks; delete the blocks folder and "
                "run the workflow again"
            )
        heads.append(head)
    halos = {int(h["halo"]) for h in heads}
    grid = [
        Block(tuple(int(v) for v in h["index"]), tuple(int(v) for v in h["core"]), tuple(int(v) for v in h["read"]))
        for h in heads
    ]
    if len(halos) != 1 or grid != grid_of(*shape, block, halos.pop()):
        raise CpsnakeError(
            f"{files[0].parent}: found block files of different grids or halos; expected the "
            f"{len(grid_of(*shape, block))} blocks of one grid; delete the folder and run the workflow "
            "again"
        )

    def load(k):
        with np.load(files[k], allow_pickle=False) as z:
            return z["seeds"], (z["dP"] if "dP" in z.files else None)

    with scratch_folder("cpsnake-labels-") as tmp:
        store = zarr.create_array(f"{tmp}/labels.zarr", shape=shape, chunks=(1024, 1024), dtype="int32", fill_value=0)
        labels, report = finish_blocks(
            grid,
            load,
            shape,
            max(int(h["heat_niter"]) for h in heads),
            flow_threshold=flow_threshold,
            min_size=min_size,
            reconstruct_device=device,
            labels=store,
        )
        report.update(block=block, halo=int(heads[0]["halo"]))
        write_label_tiff(out_tif, labels, report["objects"], pixel_size=pixel_size, unit=unit)
        if ome_zarr is not None:
            write_label_zarr(ome_zarr, labels, pixel_size=pixel_size, unit=unit)
    advice = halo_advice(report)
    if advice:  # the batch step prints it with the image's name (and config blocks.halo is the fix there)
        warnings.warn(advice.replace("--block-halo", "config blocks.halo (--block-halo)"), CpsnakeWarning, stacklevel=2)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpsnake block",
        description="pass 1 of one block of a large image (a workflow job); see cpsnake.run.blockjob",
    )
    p.add_argument("samples", type=Path, help="the samples table written by `cpsnake samples`")
    p.add_argument("batch", help="the image's batch (the table's batch column)")
    p.add_argument("name", help="the image's sample name")
    p.add_argument("index", type=int, help="the block, 0-based, row-major in the grid")
    p.add_argument("--results", type=Path, required=True, help="the results folder")
    p.add_argument("--model", required=True, help="registry name or weights file")
    p.add_argument(
        "--block-halo",
        type=option("--block-halo"),
        default=None,
        metavar="H",
        help="context around the block in px (default 96, or 3 x the diameter)",
    )
    infer.add_options(p.add_argument_group("infer options (as `cpsnake infer`)"))
    reconstruct.add_options(p.add_argument_group("reconstruct options (as `cpsnake reconstruct`)"))
    limits.add_option(p)
    return p


@guard("block")
def main(argv: list[str] | None = None) -> int:
    from cpsnake.models.registry import load_model  # torch

    args = _parser().parse_args(argv)
    infer.check_options(args)  # the option checks that need no torch come first
    reconstruct.check_options(args)
    rows = [s for s in sample_table.read_table(args.samples) if s.sample == args.name and s.batch == args.batch]
    if not rows or not rows[0].block:
        raise CpsnakeError(
            f"{args.samples}: no sample {args.name!r} segmented in blocks in batch {args.batch!r}; "
            "expected a row with block > 0 (`cpsnake samples` writes them)"
        )
    s = rows[0]
    check_halo(args.block_halo, s.block, block_name="the samples table's block")
    blocks = s.block_count
    if not 0 <= args.index < blocks:
        raise CpsnakeError(
            f"block {args.index}: found a block index outside the grid of {s.sample} ({blocks} blocks "
            f"of {s.block} px); expected 0 to {blocks - 1}; run the block jobs the workflow lists"
        )
    paths = Paths(args.results, args.batch)
    out = paths.block(s.sample, args.index)
    done = {o.sample: o for o in read_manifest(paths.manifest("normalize"))}
    if s.sample not in done or done[s.sample].status != "ok":  # failed there: skipped downstream; nothing to do
        _failed_block(out, f"{s.path}: no normalization values (the normalize step failed it)")
        print(f"cpsnake block: {s.sample} block {args.index}: skipped, no normalization values", file=sys.stderr)
        return 0
    check_output(out)  # a block file that cannot be written: one line before the model loads
    opts = infer.options(args)
    diameter = s.diameter if s.diameter is not None else opts.pop("diameter")
    opts.pop("diameter", None)
    ropts = reconstruct.options(args)
    for key in ("device", "min_size"):  # pass 2's (the assembly's, in the reconstruct step)
        ropts.pop(key)
    path = weights.resolve(args.model, progress=False)
    statefile.check(path)
    net = load_model(path, device=str(opts["device"]))
    try:
        info = block_file(
            net,
            s.path,
            done[s.sample].info["normalization"],
            out,
            args.index,
            block=s.block,
            halo=args.block_halo,
            diameter=diameter,
            max_pixels=args.max_pixels,
            **ropts,
            **opts,
        )
    except CpsnakeError as exc:
        reason = one_line(exc)
        _failed_block(out, reason if reason.startswith(s.path) else f"{s.path}: {reason}")
        print(f"cpsnake block: error: {reason}", file=sys.stderr)
        return 0
    print(
        f"cpsnake block: {s.sample} block {args.index}: {info['objects']} masks, read {info['read']}; peak memory "
        f"{peak_mb()} MB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
