"""The workflow's arguments: what the Snakemake rules take from the package instead of spelling it again.

``workflow/rules/common.smk`` imports this module when Snakemake parses the workflow and asks it for:

- **the model** (:func:`model`): which weights the config's ``model`` means, by the rule of
  :func:`cpsnake.models.weights.registry_entry` that every face shares: a registry name wins over a file of
  that name in the working folder, so ``model: cpsam`` is the same weights in the workflow and on the
  command line (write ``./cpsam`` for the file). A bundled name is its file in the repository
  (``resources/models/NAME.pt``, :data:`cpsnake.models.weights.REGISTRY`); a downloadable one is
  ``resources/weights/NAME`` (:data:`WEIGHTS_FOLDER`), which the ``weights`` rule fills with
  ``cpsnake weights fetch NAME``;
- **the results layout** (:func:`patterns`): :mod:`cpsnake.run.layout`'s paths with Snakemake's wildcards
  ``{batch}``, ``{sample}`` and ``{k}`` in place of a batch, an image and a block, and the batch names'
  pattern (:data:`cpsnake.run.batch.BATCH_PATTERN`);
- **the step arguments** (:func:`normalize_args`, :func:`infer_args`, ...): the command-line options each rule
  passes, built from the config (whose values the schema and :func:`cpsnake.bounds.check_config` have
  checked); the channel list is read by :func:`cpsnake.bounds.parse_channels`, the parser of the command line
  and the sample sheets.

A problem is a :class:`~cpsnake.errors.CpsnakeError` whose one line names the config key; common.smk prints it
as ``cpsnake workflow: error: ...``. Importing this module imports neither torch nor Snakemake.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Iterable, Mapping

from cpsnake.bounds import parse_channels
from cpsnake.errors import CpsnakeError
from cpsnake.io.files import regular_file
from cpsnake.models.weights import REGISTRY, registry_entry
from cpsnake.run.batch import BATCH_PATTERN
from cpsnake.run.layout import Paths

__all__ = [
    "WEIGHTS_FOLDER",
    "BUNDLED",
    "DOWNLOADABLE",
    "BATCH_PATTERN",
    "model",
    "channels",
    "Patterns",
    "patterns",
    "block_files",
    "signature",
    "batch_command",
    "samples_source",
    "batch_options",
    "limit_args",
    "diameter_args",
    "normalize_args",
    "infer_args",
    "reconstruct_args",
    "measure_args",
    "stack_args",
    "block_size_args",
    "block_args",
]

# where the `weights` rule links a downloaded model (relative to the working folder)
WEIGHTS_FOLDER = "resources/weights"
# registry names shipped with the repository, and those `cpsnake weights fetch` downloads
BUNDLED = tuple(sorted(name for name, e in REGISTRY.items() if e.bundled is not None))
DOWNLOADABLE = tuple(sorted(name for name, e in REGISTRY.items() if e.bundled is None))


# --- the model ----------------------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it (as the rules have always named
    ``resources/models/NAME.pt``), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def model(spec: str) -> tuple[str, str]:
    """(model file, model name) of config ``model``: a registry name (bundled: its file; downloadable: the file
    the ``weights`` rule writes), else an existing file (named by its stem); a CpsnakeError otherwise."""
    expected = f"a path to a .pt file or one of {', '.join(BUNDLED + DOWNLOADABLE)}"
    entry = registry_entry(spec)
    if entry is not None:  # a missing bundled file: Snakemake reports the missing input file
        if entry.bundled is not None:
            return _shown(entry.bundled), entry.name
        return f"{WEIGHTS_FOLDER}/{entry.name}", entry.name
    if Path(spec).is_file():
        return spec, Path(spec).stem
    if os.sep in spec or spec.endswith(".pt") or (os.path.lexists(spec) and not os.path.isdir(spec)):
        try:  # a path that is not a regular file: missing, a FIFO, a device, a broken link (stat only)
            regular_file(spec, f"a model: {expected}")
        except CpsnakeError as exc:
            raise CpsnakeError(f"config model: {exc}") from None
    close = difflib.get_close_matches(spec, BUNDLED + DOWNLOADABLE, n=1)
    raise CpsnakeError(
        f"config model={spec!r}: found neither a file nor a registry name; expected {expected}; "
        + (f"did you mean {close[0]!r}? " if close else "")
        + "fix model in the config file or --config"
    )


def channels(value) -> list[int] | None:
    """Config ``channels`` (:func:`cpsnake.bounds.parse_channels`; the schema has checked its form) as distinct
    channel numbers, or None."""
    fix = "fix channels in the config file or --config"
    try:
        parsed = parse_channels(value)
    except ValueError:
        raise CpsnakeError(
            f"config channels: found {value!r}; expected 0-based channel numbers such as 0,2; {fix}"
        ) from None
    if parsed is not None and len(set(parsed)) != len(parsed):
        raise CpsnakeError(
            f"config channels: found {value!r}, which repeats a channel; expected distinct channel "
            f"numbers such as 0,2; {fix}"
        )
    return parsed


# --- the results layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patterns:
    """The results layout (:mod:`cpsnake.run.layout`) as the paths the rules name, with the wildcards
    ``{batch}``, ``{sample}`` and ``{k}``."""

    samples_table: str
    measurements_table: str
    summary: str
    failed: str
    provenance: str
    check_done: str
    image_logs: str
    normalized: str  # the batch's folders of per-image files
    flows: str
    report_overlays: str
    block: str  # one block file of an image in blocks
    work: str  # a batch's work folder

    def manifest(self, step: str) -> str:
        """The manifest of ``step`` over batch ``{batch}``."""
        return f"{self.work}/{step}.tsv"

    @property
    def run_outputs(self) -> list[str]:
        """The run's last files: what ``rule all`` asks for."""
        return [self.measurements_table, self.summary, self.failed, self.provenance, self.check_done]


def patterns(results: str) -> Patterns:
    """The :class:`Patterns` of the results folder ``results``."""
    p = Paths(results, "{batch}")
    return Patterns(
        samples_table=str(p.samples_table),
        measurements_table=str(p.measurements_table),
        summary=str(p.summary),
        failed=str(p.failed),
        provenance=str(p.provenance),
        check_done=str(p.check_done),
        image_logs=str(p.image_logs),
        normalized=str(p.folder("normalize")),
        flows=str(p.folder("infer")),
        report_overlays=str(p.folder("overlay")),
        block=str(p.block("{sample}", "{k}")),
        work=str(p.work),
    )


def block_files(results: str, batch: str, rows: Iterable) -> list[str]:
    """The block files of the images in blocks among ``rows`` (samples-table rows) of batch ``batch``."""
    p = Paths(results, batch)
    return [str(p.block(s.sample, k)) for s in rows for k in range(s.block_count)]


def signature(rows: Iterable) -> str:
    """The listed samples and their options (JSON), a rule's param: a change reruns what it changes."""
    return json.dumps([[s.sample, s.path, s.channels, s.diameter, s.pixel_size] for s in rows])


# --- the step arguments ------------------------------------------------------------------------------


def _join(args: Iterable[str]) -> str:
    return " ".join(a for a in args if a)


def batch_command(cpsnake: str, step: str, samples_table: str, results: str) -> str:
    """``CPSNAKE batch STEP SAMPLES BATCH --results RESULTS`` (the batch filled in by Snakemake)."""
    return f"{cpsnake} batch {step} {quote(samples_table)} {{wildcards.batch}} --results {quote(results)}"


def samples_source(config: Mapping) -> str:
    """``cpsnake samples`` arguments naming where the samples come from."""
    if config["samples"]:
        return f"--sheet {quote(config['samples'])}"
    return f"--images {quote(config['images'])}"


def batch_options(config: Mapping) -> str:
    """``cpsnake samples``' batch sizes from config ``batch``."""
    return f"--batch-images {config['batch']['images']} --batch-pixels {config['batch']['pixels']}"


def limit_args(config: Mapping) -> str:
    """``--max-pixels N`` from config max_pixels (every step that reads images, labels or flows)."""
    return f"--max-pixels {int(config['max_pixels'])}"


def diameter_args(config: Mapping) -> str:
    """``--diameter D`` when config diameter is set (a sample sheet's diameter overrides it per image)."""
    return "" if config["diameter"] is None else f"--diameter {config['diameter']}"


def normalize_args(config: Mapping) -> str:
    """``cpsnake normalize`` options from config."""
    cfg = config["normalize"]
    args = ["--percentiles", *map(str, cfg["percentiles"])]
    picked = channels(config["channels"])
    if picked is not None:
        args += ["--channels", ",".join(map(str, picked))]
    if cfg["low_high"] is not None:
        args += ["--low-high", *map(str, cfg["low_high"])]
    if cfg["invert"]:
        args.append("--invert")
    if cfg["tile_norm"]:
        args += ["--tile-norm", str(cfg["tile_norm"])]
    return " ".join(args + [stack_args(config)]).strip()


def infer_args(config: Mapping) -> str:
    """``cpsnake infer`` options from config (device and threads come from resources, not config)."""
    cfg = config["inference"]
    args = [f"--tile-overlap {cfg['tile_overlap']}", diameter_args(config)]
    if cfg["augment"]:
        args.append("--augment")
    return _join(args + [stack_args(config)])


def _reconstruct_options(rcfg: Mapping) -> list[str]:
    return [f"--cellprob-threshold {rcfg['cellprob_threshold']}", f"--flow-threshold {rcfg['flow_threshold']}"]


def reconstruct_args(config: Mapping) -> str:
    """``cpsnake reconstruct`` options from config (and ``--ome-zarr`` with config ome_zarr)."""
    cfg = config["reconstruct"]
    args = [
        *_reconstruct_options(cfg),
        f"--min-size {cfg['min_size']}",
        f"--max-size-fraction {cfg['max_size_fraction']}",
        diameter_args(config),
    ]
    if cfg["niter"] is not None:
        args.append(f"--niter {cfg['niter']}")
    return _join(args + [stack_args(config)]) + (" --ome-zarr" if config["ome_zarr"] else "")


def measure_args(config: Mapping) -> str:
    """``cpsnake measure`` options from config: the stack options (stacks segmented plane by plane get
    ImageJ's rows per slice, 3-D objects one row each), and ``--geojson`` with config geojson."""
    return stack_args(config) + (" --geojson" if config["geojson"] else "")


def stack_args(config: Mapping) -> str:
    """The stack options from config ``stacks`` (every per-image step takes them: each uses its own)."""
    cfg = config["stacks"]
    if cfg["do_3d"] and cfg["stitch_threshold"] > 0:
        raise CpsnakeError(
            f"config stacks: found do_3d true and stitch_threshold {cfg['stitch_threshold']}; expected one of them "
            "(3-D, or 2-D planes stitched); set stacks.do_3d false or stacks.stitch_threshold 0"
        )
    args = []
    if cfg["do_3d"]:
        args.append("--do-3d")
        if cfg["anisotropy"] is not None:
            args.append(f"--anisotropy {cfg['anisotropy']}")
        smooth = cfg["flow3d_smooth"]
        args.append("--flow3d-smooth " + " ".join(map(str, smooth if isinstance(smooth, list) else [smooth])))
        args.append(f"--flow3d-threshold {cfg['flow3d_threshold']}")
    if cfg["stitch_threshold"] > 0:
        args.append(f"--stitch-threshold {cfg['stitch_threshold']}")
    if cfg["track"]:
        args.append(f"--track --track-threshold {cfg['track_threshold']}")
    return " ".join(args)


def block_size_args(config: Mapping) -> str:
    """``--block-size N`` for ``cpsnake samples`` when config blocks.size is set (else its automatic rule)."""
    size = config["blocks"]["size"]
    return "" if size is None else f"--block-size {int(size)}"


def block_args(config: Mapping) -> str:
    """``cpsnake block`` options from config: inference and reconstruction (no stack options), the halo."""
    cfg, rcfg = config["inference"], config["reconstruct"]
    args = [f"--tile-overlap {cfg['tile_overlap']}", diameter_args(config)]
    if cfg["augment"]:
        args.append("--augment")
    args += [*_reconstruct_options(rcfg), f"--max-size-fraction {rcfg['max_size_fraction']}"]
    if rcfg["niter"] is not None:
        args.append(f"--niter {rcfg['niter']}")
    if config["blocks"]["halo"] is not None:
        args.append(f"--block-halo {int(config['blocks']['halo'])}")
    return _join(args)
