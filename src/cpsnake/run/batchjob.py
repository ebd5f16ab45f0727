"""``cpsnake batch STEP SAMPLES.tsv BATCH --results DIR [options]``: one workflow step for a batch of images,
in one process.

The workflow's per-image steps run as one job per batch of images (see :mod:`cpsnake.run.batch` for how
batches are formed): the process starts once, imports numpy and torch once and, for ``infer``, loads the
model once and pools the tiles of the batch's images into shared network batches
(:func:`cpsnake.engine.infer.predict_many`). Each image goes through the same per-file function as the
one-image command (``normalize_file``, ``reconstruct_file``, ``export_file``, ``measure_file``,
``overlay_file``), so its files are the same bytes as ``cpsnake normalize IMAGE ...`` would write.

STEP is one of ``normalize, infer, reconstruct, rois, measure, overlay``. Files, under the results folder
DIR, for a batch ``b`` and an image ``NAME`` (:mod:`cpsnake.run.layout`):

========================  =============================================  ================================
step                      writes                                         reads
========================  =============================================  ================================
normalize                 ``work/b/normalized/NAME.tif`` (+ ``.json``)   the image (SAMPLES.tsv's path)
infer                     ``work/b/flows/NAME.tif``                      ``work/b/normalized/NAME.tif``
reconstruct               ``masks/NAME.tif`` (+ ``masks/NAME.zarr`` with   ``work/b/flows/NAME.tif``
                          ``--ome-zarr``)
rois                      ``rois/NAME.zip``                              ``masks/NAME.tif``
measure                   ``measurements/NAME.csv`` (+ ``geojson/NAME``   masks, the image, the flows
                          ``.geojson`` with ``--geojson``)
overlay                   ``overlays/NAME.png`` (+ ``work/b/overlays/``)  masks, the image
========================  =============================================  ================================

An image segmented in blocks (the table's ``block`` > 0, :mod:`cpsnake.run.blockjob`) gets only its values
``NAME.json`` from normalize, no flows from infer (its block jobs compute them), and its masks from
reconstruct by assembling the block jobs' files ``work/b/blocks/NAME/K.npz`` into one label image (built in a
Zarr array on disk); measure then has no flows. Its rois, measure and overlay steps read the label TIFF and
the image region by region and write window by window (:mod:`cpsnake.export.blockout`), so no step holds it whole.

Every step also writes the batch's *manifest* ``work/b/STEP.tsv`` (:mod:`cpsnake.run.batch`: one row per
image of the batch, its status, reason, seconds and info), last and atomically, so a batch job that did not
finish leaves none.

Failure isolation: an image whose step fails (a :class:`~cpsnake.errors.CpsnakeError`: truncated file,
constant image, ...) is marked ``failed`` with its one-line reason, which also goes to
``logs/images/NAME.log`` and to the job's stderr; the other images go on and the job exits 0. Later steps
skip it. A bug (any other exception) stops the job with its traceback, as everywhere in cpsnake.

Two imports stay inside the functions that use them: the model loader (torch) and the measure step's module
(scipy), so that a bad option is refused, and the other steps run, without them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from cpsnake.engine import infer, size
from cpsnake.errors import CpsnakeError, collected_warnings, guard, one_line
from cpsnake.io import limits
from cpsnake.io.flows import write_flows
from cpsnake.io.labels import read_labels
from cpsnake.io.ngff import write_label_zarr
from cpsnake.io.outputs import all_or_nothing, atomic_output, check_output, make_folder, written
from cpsnake.models import statefile, weights
from cpsnake.run import samples as sample_table
from cpsnake.run.batch import STEPS, UPSTREAM, Outcome, read_manifest, write_manifest
from cpsnake.run.blockjob import assemble_file, values_file
from cpsnake.run.jobmem import peak_mb
from cpsnake.run.layout import STEP_FOLDERS, Paths
from cpsnake.stacks import stack
from cpsnake.steps import infer as infer_step
from cpsnake.steps import normalize, overlay, reconstruct, rois, stack_options

__all__ = ["run_step", "main"]


# --- running a step over the batch ------------------------------------------------------------------


def _fail(paths: Paths, step: str, name: str, exc: CpsnakeError, t0: float) -> Outcome:
    reason = one_line(exc)
    with atomic_output(paths.image_log(name)) as tmp:  # first: a log that cannot be written is the job's one line
        tmp.write_text(f"cpsnake {step}: error: {reason}\n")
    print(f"cpsnake batch {step}: error: {reason}", file=sys.stderr)
    return Outcome(name, "failed", reason, time.perf_counter() - t0)


def _each(rows, paths: Paths, step: str, fn: Callable[..., dict | None]) -> Iterator[Outcome]:
    """Run ``fn(sample) -> info`` on each row, one failing image at a time."""
    for s in rows:
        t0 = time.perf_counter()
        try:
            with collected_warnings() as notes, all_or_nothing():  # the image's files of this step: all or none
                info = fn(s) or {}
        except CpsnakeError as exc:
            yield _fail(paths, step, s.sample, exc, t0)
            continue
        for note in notes:
            print(f"cpsnake batch {step}: warning: {s.sample}: {note}", file=sys.stderr)
        yield Outcome(s.sample, "ok", "", time.perf_counter() - t0, info)


def _infer(rows, paths: Paths, args) -> Iterator[Outcome]:
    """The batch's images through one model, their tiles pooled (see :func:`cpsnake.engine.infer.predict_many`)."""
    from cpsnake.models.registry import load_model  # torch

    infer_step.check_options(args)
    if all(s.block for s in rows):  # nothing for the network (no image left, or images in blocks): no model load
        return iter([Outcome(s.sample, "ok", "", 0.0, {"blocks": s.block}) for s in rows])
    path = weights.resolve(args.model, progress=False)
    statefile.check(path)
    opts = infer_step.options(args)
    default_diameter = opts.pop("diameter")
    net = load_model(path, device=str(opts["device"]))
    spec = infer.tiling(net)
    wants_auto = default_diameter == "auto" or any(s.diameter == "auto" for s in rows)
    size_params = size.size_model_for(net, path, args.size_model) if wants_auto else None
    taken: list = []  # (sample, meta) of the images handed to the network, in order
    diameters: list = []  # filled as images are taken: predict_many reads entry k when it prepares image k
    failed: list[Outcome] = []
    done: list[Outcome] = []  # stacks, written as they are read
    sopts = stack_options.options(args)

    def images():
        for s in rows:
            t0 = time.perf_counter()
            if s.block:  # its flows are computed by its block jobs (cpsnake.run.blockjob)
                done.append(Outcome(s.sample, "ok", "", 0.0, {"blocks": s.block}))
                continue
            try:
                img, meta = infer_step.read_normalized(paths.normalized(s.sample), max_pixels=args.max_pixels)
                d = s.diameter if s.diameter is not None else default_diameter
                if d == "auto":
                    plane = img if img.ndim == 3 else img[img.shape[0] // 2]  # a stack: its middle plane
                    d = size.auto_diameter(net, plane, path, args.size_model, opts, source=s.sample, params=size_params)
                if spec.scale(d) is not None:
                    infer.scaled_shape(img.shape, spec.scale(d), args.max_pixels, why=f"{s.sample}: diameter {d}")
                if img.ndim == 4:  # a stack: its planes (or three views) go through the network now
                    do_3d = sopts["mode"] == "3d" and meta["stack_axes"] == "Z"  # config stacks: where it fits
                    flows = stack.stack_flows(
                        net,
                        img,
                        do_3d=do_3d,
                        diameter=d,
                        anisotropy=sopts["anisotropy"],
                        flow3d_smooth=sopts["flow3d_smooth"],
                        max_pixels=args.max_pixels,
                        **opts,
                    )
                    write_flows(
                        paths.flows(s.sample),
                        flows,
                        pixel_size=meta["pixel_size"],
                        unit=meta["unit"],
                        network_scale=spec.scale(d),
                        stack_axes=meta["stack_axes"],
                        z_step=meta.get("z_step"),
                        frame_interval=meta.get("frame_interval"),
                        three_d=do_3d,
                    )
                    done.append(Outcome(s.sample, "ok", "", time.perf_counter() - t0, {"diameter": d}))
                    continue
            except CpsnakeError as exc:
                failed.append(_fail(paths, "infer", s.sample, exc, t0))
                continue
            taken.append((s, meta))
            diameters.append(d)
            yield img

    t = time.perf_counter()
    outcomes = {}
    for k, flows in enumerate(
        infer.predict_many(net, images(), diameters=diameters, progress=False, max_pixels=args.max_pixels, **opts)
    ):
        s, meta = taken[k]
        write_flows(
            paths.flows(s.sample),
            flows,
            pixel_size=meta["pixel_size"],
            unit=meta["unit"],
            network_scale=spec.scale(diameters[k]),
        )
        now = time.perf_counter()
        outcomes[s.sample] = Outcome(s.sample, "ok", "", now - t, {"diameter": diameters[k]})
        t = now
    outcomes.update({o.sample: o for o in failed + done})
    return iter([outcomes[s.sample] for s in rows])


def run_step(step: str, rows, paths: Paths, args) -> list[Outcome]:
    """Run ``step`` on the batch's samples ``rows`` (:class:`cpsnake.run.samples.Sample`, those still ``ok``).

    ``args`` holds the step's options as parsed by :func:`main`. Returns one outcome per row, in order.
    """
    if step == "normalize":
        opts = normalize.options(args)
        default_channels = opts.pop("channels")
        norm3d = (
            stack_options.options(args)["mode"] != "planes"
        )  # --do-3d and --stitch-threshold: the whole stack at once

        def one(s):
            channels = s.channels if s.channels is not None else default_channels
            if s.block:  # block jobs read the image region by region: the values only
                doc = values_file(
                    s.path,
                    paths.normalized(s.sample).with_suffix(".json"),
                    channels=channels,
                    max_pixels=args.max_pixels,
                    pixel_size=s.pixel_size,
                    **opts,
                )
                return {"normalization": doc}
            doc = normalize.normalize_file(
                s.path,
                paths.normalized(s.sample),
                channels=channels,
                max_pixels=args.max_pixels,
                pixel_size=s.pixel_size,
                norm3d=norm3d,
                **opts,
            )
            return {"normalization": doc}

        return list(_each(rows, paths, step, one))
    if step == "infer":
        return list(_infer(rows, paths, args))
    if step == "reconstruct":
        opts = reconstruct.options(args) | reconstruct.stack_keywords(args)
        ome_zarr = getattr(args, "ome_zarr", False)

        def zarr_labels(s, info: dict) -> dict:  # --ome-zarr: the label TIFF just written, as OME-Zarr labels
            labels, meta = read_labels(written(paths.masks(s.sample)), max_pixels=args.max_pixels)
            if labels.ndim != 2:
                print(
                    f"cpsnake batch reconstruct: warning: {s.sample}: OME-Zarr labels are written for 2-D images; "
                    "this stack's labels are in the TIFF only",
                    file=sys.stderr,
                )
                return info
            write_label_zarr(
                paths.masks(s.sample).with_suffix(".zarr"), labels, pixel_size=meta["pixel_size"], unit=meta["unit"]
            )
            return info

        def one(s):  # the flows record the network's scale (and so niter)
            if s.block:  # pass 2 over the block jobs' files, assembled into one label image
                doc = {o.sample: o for o in read_manifest(paths.manifest("normalize"))}[s.sample].info["normalization"]
                files = [paths.block(s.sample, k) for k in range(s.block_count)]
                report = assemble_file(
                    files,
                    paths.masks(s.sample),
                    shape=(s.height, s.width),
                    block=s.block,
                    pixel_size=doc["pixel_size"],
                    unit=doc["unit"],
                    ome_zarr=paths.masks(s.sample).with_suffix(".zarr") if ome_zarr else None,
                    **opts,
                )
                return {"cells": report["objects"], "blocks": report}
            info = {
                "cells": reconstruct.reconstruct_file(
                    paths.flows(s.sample), paths.masks(s.sample), max_pixels=args.max_pixels, where_fit=True, **opts
                )
            }
            return zarr_labels(s, info) if ome_zarr else info

        return list(_each(rows, paths, step, one))
    if step == "rois":

        def one(s):  # block-wise images: labels read by region, ROIs written window by window (cpsnake.export.blockout)
            if s.block:
                return {"rois": rois.export_file_by_window(paths.masks(s.sample), paths.rois(s.sample))}
            return {"rois": rois.export_file(paths.masks(s.sample), paths.rois(s.sample), max_pixels=args.max_pixels)}

        return list(_each(rows, paths, step, one))
    if step == "measure":
        from cpsnake.steps import measure  # scipy: only the measure step pays for it

        per_slice = (
            stack_options.options(args)["mode"] == "planes"
        )  # Z stacks plane by plane: 2-D objects, rows per slice

        def one(s):
            geojson = paths.geojson(s.sample) if args.geojson else None
            if s.block:
                return {
                    "rows": measure.measure_file_by_window(
                        paths.masks(s.sample),
                        s.path,
                        paths.measurements(s.sample),
                        pixel_size=s.pixel_size,
                        geojson_path=geojson,
                        max_pixels=args.max_pixels,
                    )
                }
            return {
                "rows": measure.measure_file(
                    paths.masks(s.sample),
                    s.path,
                    paths.measurements(s.sample),
                    max_pixels=args.max_pixels,
                    flows_path=paths.flows(s.sample),
                    pixel_size=s.pixel_size,
                    per_slice=per_slice,
                    geojson_path=geojson,
                )
            }

        return list(_each(rows, paths, step, one))
    if step == "overlay":

        def one(s):
            if s.block:
                overlay.overlay_file_by_window(
                    s.path, paths.masks(s.sample), paths.overlay(s.sample), max_pixels=args.max_pixels
                )
            else:
                overlay.overlay_file(s.path, paths.masks(s.sample), paths.overlay(s.sample), max_pixels=args.max_pixels)
            _link(paths.overlay(s.sample), paths.report_overlay(s.sample))

        return list(_each(rows, paths, step, one))
    raise CpsnakeError(f"step {step!r}: unknown, expected one of {', '.join(STEPS)}")


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (just written, see :func:`cpsnake.io.outputs.written`; a copy where links
    are not possible), written as every output is."""
    with atomic_output(dst) as tmp:
        try:
            os.link(written(src), tmp)
        except OSError:
            shutil.copyfile(written(src), tmp)


# --- command line -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cpsnake batch", description=" ".join(__doc__.split("\n\n")[0].split()).split(": ", 1)[1]
    )
    p.add_argument("step", choices=STEPS)
    p.add_argument("samples", type=Path, help="the samples table written by `cpsnake samples`")
    p.add_argument("batch", help="the batch to run (e.g. b0001, the table's batch column)")
    p.add_argument("--results", type=Path, required=True, help="the results folder")
    p.add_argument("--model", default=None, help="infer: registry name or weights file")
    for title, module in (("normalize", normalize), ("infer", infer_step), ("reconstruct", reconstruct)):
        module.add_options(p.add_argument_group(f"{title} options (as `cpsnake {title}`)"))
    stack_options.add_options(p.add_argument_group("stack options (see cpsnake.stacks.stack)"))
    p.add_argument("--geojson", action="store_true", help="measure: also write geojson/NAME.geojson (QuPath)")
    p.add_argument(
        "--ome-zarr",
        action="store_true",
        help="reconstruct: also write masks/NAME.zarr, OME-Zarr labels (2-D images; cpsnake.io.ngff)",
    )
    limits.add_option(p)
    return p


@guard("batch")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.step == "infer" and not args.model:
        raise CpsnakeError("cpsnake batch infer: found no --model, expected a registry name or a weights file")
    paths = Paths(args.results, args.batch)
    rows = [s for s in sample_table.read_table(args.samples) if s.batch == args.batch and s.status == "ok"]
    if not rows:
        raise CpsnakeError(
            f"{args.samples}: batch {args.batch!r} holds no image; expected a batch of the table "
            "(`cpsnake samples` writes them)"
        )
    check_output(paths.manifest(args.step))  # results that cannot be written: one line before any work
    skipped: dict[str, Outcome] = {}
    upstream = UPSTREAM[args.step]
    if upstream is not None:
        done = {o.sample: o for o in read_manifest(paths.manifest(upstream))}
        for s in rows:
            o = done.get(s.sample)
            if o is None or o.status != "ok":
                why = (
                    o.reason
                    if o is not None and o.status == "skipped"
                    else f"{upstream} {o.status if o else 'missing'}"
                )
                skipped[s.sample] = Outcome(s.sample, "skipped", why)
    todo = [s for s in rows if s.sample not in skipped]
    outcomes = {o.sample: o for o in run_step(args.step, todo, paths, args)}
    outcomes.update(skipped)
    result = [outcomes[s.sample] for s in rows]
    if args.step in STEP_FOLDERS:  # the step's folder is a workflow output: it exists even when every image failed
        make_folder(paths.folder(args.step))
    write_manifest(paths.manifest(args.step), result)
    failed = sum(o.status == "failed" for o in result)
    print(
        f"cpsnake batch {args.step} {args.batch}: {len(result) - failed - len(skipped)} ok, {failed} failed, "
        f"{len(skipped)} skipped; peak memory {peak_mb()} MB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
