"""``cpsnake <step> ...``: one sub-command per pipeline step.

Each step lives in its own module with a ``main(argv=None) -> int`` (the per-rule steps in
:mod:`cpsnake.steps`, whole runs in :mod:`cpsnake.run`, training in :mod:`cpsnake.training`); this file only
dispatches, so ``cpsnake normalize ...`` and ``python -m cpsnake.steps.normalize ...`` are the same program.
A step's module is imported only when that step runs, so that ``cpsnake --help`` and each step's own checks
stay quick.
"""

from __future__ import annotations

import importlib
import sys

from cpsnake import __version__

__all__ = ["STEPS", "main"]

# step name -> (module, one-line help)
STEPS: dict[str, tuple[str, str]] = {
    "normalize": ("cpsnake.steps.normalize", "percentile-normalize an image's channels for the network"),
    "infer": ("cpsnake.steps.infer", "tiled network inference: normalized image -> flows (dY, dX, cellprob)"),
    "reconstruct": ("cpsnake.steps.reconstruct", "flows -> label image (flow following, QC, min size)"),
    "rois": ("cpsnake.steps.rois", "label image <-> ImageJ RoiSet.zip (pixel-exact, traced polygons)"),
    "measure": ("cpsnake.steps.measure", "per-cell measurement table with ImageJ's definitions"),
    "geojson": (
        "cpsnake.steps.geojson",
        "label image -> QuPath GeoJSON (cell polygons along pixel edges, measurements)",
    ),
    "overlay": ("cpsnake.steps.overlay", "QC picture: outlines of the labels over the image"),
    "aggregate": ("cpsnake.run.aggregate", "join per-image tables into run-level tables"),
    "provenance": (
        "cpsnake.run.provenance",
        "provenance record of a workflow run (versions, model sha256, parameters)",
    ),
    "segment": ("cpsnake.run.segment", "the whole chain in one process: images -> masks"),
    "samples": ("cpsnake.run.samples", "the run's images: sample sheet or folder, header inspection, batches"),
    "batch": ("cpsnake.run.batchjob", "one workflow step for a batch of images, in one process"),
    "block": (
        "cpsnake.run.blockjob",
        "one block of a large image, as a workflow job (pass 1 of block-wise segmentation)",
    ),
    "weights": ("cpsnake.steps.weights", "list or fetch model weights (sha256-checked cache)"),
    "train": ("cpsnake.training.train", "train or fine-tune a Cellpose-SAM model or a classic Cellpose U-Net"),
    "train-size": ("cpsnake.training.train_size", "fit a U-Net's size model (style -> diameter) for --diameter auto"),
    "evaluate": ("cpsnake.training.evaluate", "average precision and error rate of predicted vs true labels"),
}


def _usage() -> str:
    width = max(len(s) for s in STEPS)
    lines = ["usage: cpsnake <step> [options]  (cpsnake <step> --help for a step's options)", "", "steps:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in STEPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"cpsnake {__version__}")
        return 0
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"cpsnake: error: unknown step {step!r}; expected one of {', '.join(STEPS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(STEPS[step][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
