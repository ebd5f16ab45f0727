"""Where a run's files lie under its results folder: the one definition of the results layout.

The batch jobs (:mod:`cpsnake.run.batchjob`), the block jobs (:mod:`cpsnake.run.blockjob`), the run tables
(:mod:`cpsnake.run.aggregate`) and the workflow's rules (through :mod:`cpsnake.run.workflow_args`, with
Snakemake's wildcards ``{batch}``, ``{sample}``, ``{k}`` in place of a batch, an image and a block) all take
their paths from here. Under the results folder ``RESULTS``, for a batch ``b`` and an image ``NAME``:

====================================  ==============================================================
file                                  what
====================================  ==============================================================
``samples.tsv``                       the samples table (``cpsnake samples``, :mod:`cpsnake.run.samples`)
``masks/NAME.tif``                    labels (+ ``masks/NAME.zarr``, OME-Zarr labels, when asked for)
``rois/NAME.zip``                     ImageJ ROIs
``measurements/NAME.csv``             one row per cell (+ ``geojson/NAME.geojson`` when asked for)
``overlays/NAME.png``                 the QC picture
``logs/images/NAME.log``              the one-line reason of an image that failed
``measurements.csv``, ``summary.csv``,  the run tables (``cpsnake aggregate``) and the provenance record
``failed.csv``, ``provenance.json``
``work/b/STEP.tsv``                   the manifest of a step over batch ``b`` (:mod:`cpsnake.run.batch`)
``work/b/normalized/NAME.tif``        network inputs (``.json`` beside: the values used)
``work/b/flows/NAME.tif``             flows
``work/b/overlays/NAME.png``          the overlay, linked for the report
``work/b/blocks/NAME/K.npz``          block ``K`` of an image segmented in blocks (pass 1)
``work/check.done``                   the run's last job: written when no image failed
====================================  ==============================================================

Paths are :class:`pathlib.Path` objects joined from the results folder as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STEP_FOLDERS", "Results", "Paths"]

# the folder under work/BATCH that a step writes its per-image files into (the others write under RESULTS)
STEP_FOLDERS = {"normalize": "normalized", "infer": "flows", "overlay": "overlays"}


@dataclass(frozen=True)
class Results:
    """The run's files under the results folder ``results``: the run's tables and each image's outputs."""

    results: Path

    @property
    def root(self) -> Path:
        return Path(self.results)

    @property
    def samples_table(self) -> Path:
        return self.root / "samples.tsv"

    @property
    def measurements_table(self) -> Path:
        return self.root / "measurements.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    @property
    def failed(self) -> Path:
        return self.root / "failed.csv"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def check_done(self) -> Path:
        return self.root / "work" / "check.done"

    @property
    def image_logs(self) -> Path:
        return self.root / "logs" / "images"

    def image_log(self, name: str) -> Path:
        return self.image_logs / f"{name}.log"

    def masks(self, name: str) -> Path:
        return self.root / "masks" / f"{name}.tif"

    def rois(self, name: str) -> Path:
        return self.root / "rois" / f"{name}.zip"

    def measurements(self, name: str) -> Path:
        return self.root / "measurements" / f"{name}.csv"

    def geojson(self, name: str) -> Path:
        return self.root / "geojson" / f"{name}.geojson"

    def overlay(self, name: str) -> Path:
        return self.root / "overlays" / f"{name}.png"


@dataclass(frozen=True)
class Paths(Results):
    """Where the files of batch ``batch`` lie under the results folder ``results`` (and, as :class:`Results`,
    the run's)."""

    batch: str

    @property
    def work(self) -> Path:
        return self.root / "work" / self.batch

    def manifest(self, step: str) -> Path:
        return self.work / f"{step}.tsv"

    def folder(self, step: str) -> Path:
        """The folder of the batch's per-image files of ``step`` (a key of :data:`STEP_FOLDERS`)."""
        return self.work / STEP_FOLDERS[step]

    def normalized(self, name: str) -> Path:
        return self.folder("normalize") / f"{name}.tif"

    def flows(self, name: str) -> Path:
        return self.folder("infer") / f"{name}.tif"

    def report_overlay(self, name: str) -> Path:
        return self.folder("overlay") / f"{name}.png"

    def block(self, name: str, k: int | str) -> Path:
        """Block ``k`` (0-based, row-major in the image's grid) of the image ``name`` segmented in blocks."""
        return self.work / "blocks" / name / f"{k}.npz"

    def image_files(self, name: str) -> list[Path]:
        """Every file and folder the steps write for the image ``name`` (its log aside)."""
        return [
            self.masks(name),
            self.masks(name).with_suffix(".zarr"),
            self.rois(name),
            self.measurements(name),
            self.geojson(name),
            self.overlay(name),
            self.report_overlay(name),
        ]
