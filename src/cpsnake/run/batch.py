"""Batches: how a run's images are grouped into jobs, and the manifest each step writes for a batch.

The workflow's per-image steps run as one job per batch of images (``cpsnake batch``,
:mod:`cpsnake.run.batchjob`), so a run of thousands of images is a few hundred jobs, each starting Python
and loading the model once. Batches are formed here, from the images that passed inspection
(:func:`cpsnake.run.samples.inspect`, which writes them into the samples table): in sample-name order, a
batch takes images while it holds at most ``--batch-images`` images (default :data:`BATCH_IMAGES`, 64) and at
most ``--batch-pixels`` pixels (Y x X x planes, default :data:`BATCH_PIXELS`, 50,000,000); an image larger
than that budget is a batch of its own. Batches are named ``b0001``, ``b0002``, ... in that order
(:data:`BATCH_PATTERN`), so the same samples and settings always give the same batches.

Each step over a batch writes its *manifest* ``work/b/STEP.tsv`` (:class:`cpsnake.run.layout.Paths`): one row per
image of the batch, columns ``sample``, ``status`` (``ok``, ``failed`` or ``skipped`` when an earlier step
failed it), ``reason`` (the one-line error), ``seconds`` and ``info`` (JSON: the normalization record, the
number of cells, ...). The manifest is written last and atomically, so a batch job that did not finish
leaves none. :data:`STEPS` are the steps, :data:`UPSTREAM` the step whose manifest each one reads.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from cpsnake.errors import CpsnakeError, library_text
from cpsnake.io.files import regular_file
from cpsnake.io.outputs import atomic_output
from cpsnake.io.tables import field_limit, read_cell, writer

__all__ = [
    "BATCH_IMAGES",
    "BATCH_PIXELS",
    "BATCH_PATTERN",
    "form_batches",
    "batch_names",
    "STEPS",
    "UPSTREAM",
    "Outcome",
    "MANIFEST_COLUMNS",
    "read_manifest",
    "write_manifest",
]

BATCH_IMAGES = 64  # at most this many images per batch job
BATCH_PIXELS = 50_000_000  # at most this many pixels (Y x X x planes) per batch job, unless one image is larger
BATCH_PATTERN = r"b[0-9]+"  # a batch's name (the workflow's {batch} wildcard)

STEPS = ("normalize", "infer", "reconstruct", "rois", "measure", "overlay")
UPSTREAM = {
    "normalize": None,
    "infer": "normalize",
    "reconstruct": "infer",
    "rois": "reconstruct",
    "measure": "reconstruct",
    "overlay": "reconstruct",
}


def form_batches(
    sizes: Sequence[tuple[str, int]], *, max_pixels: int = BATCH_PIXELS, max_images: int = BATCH_IMAGES
) -> list[list[str]]:
    """Group (name, pixels) pairs into batches, deterministically.

    Names are taken in sorted order; a batch grows while it has fewer than ``max_images`` names and its
    pixels stay within ``max_pixels``; an image larger than ``max_pixels`` is a batch of its own.

    Returns
    -------
    list of batches, each a list of names in sorted order.
    """
    if max_images < 1 or max_pixels < 1:
        raise ValueError(f"batch limits {max_images} images / {max_pixels} pixels, expected >= 1")
    batches: list[list[str]] = []
    current: list[str] = []
    total = 0
    for name, pixels in sorted(sizes):
        if current and (len(current) >= max_images or total + pixels > max_pixels):
            batches.append(current)
            current, total = [], 0
        current.append(name)
        total += pixels
    if current:
        batches.append(current)
    return batches


def batch_names(
    sizes: Sequence[tuple[str, int]], *, max_pixels: int = BATCH_PIXELS, max_images: int = BATCH_IMAGES
) -> dict[str, str]:
    """Each name's batch, ``b0001``, ``b0002``, ... in the order of :func:`form_batches`."""
    return {
        name: f"b{k:04d}"
        for k, names in enumerate(form_batches(sizes, max_pixels=max_pixels, max_images=max_images), start=1)
        for name in names
    }


# --- manifests --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one step did with one image (a manifest row)."""

    sample: str
    status: str  # "ok", "failed" or "skipped"
    reason: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


MANIFEST_COLUMNS = ["sample", "status", "reason", "seconds", "info"]


def write_manifest(path: str | os.PathLike, outcomes: list[Outcome]) -> None:
    """Write a step's manifest (TSV, :data:`MANIFEST_COLUMNS`) atomically; text cells as
    :func:`cpsnake.io.tables.cell` writes them."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = writer(fh, delimiter="\t")
        w.writerow(MANIFEST_COLUMNS)
        for o in outcomes:
            w.writerow(
                [o.sample, o.status, o.reason, f"{o.seconds:.4f}", json.dumps(o.info, sort_keys=True, default=str)]
            )


def read_manifest(path: str | os.PathLike) -> list[Outcome]:
    """Read a manifest written by :func:`write_manifest` (a missing or damaged one is a one-line CpsnakeError)."""
    what = "a step manifest written by `cpsnake batch`"
    regular_file(path, what)
    try:
        with field_limit(1 << 30), open(path, newline="", encoding="utf-8") as fh:  # info: normalization records
            return [
                Outcome(
                    read_cell(r["sample"]),
                    read_cell(r["status"]),
                    read_cell(r["reason"]),
                    float(r["seconds"]),
                    json.loads(r["info"]),
                )
                for r in csv.DictReader(fh, delimiter="\t")
            ]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CpsnakeError(
            f"{path}: cannot be read ({type(exc).__name__}: {library_text(exc)}); expected {what}; "
            "delete it and run the step again"
        ) from None
