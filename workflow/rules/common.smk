# Samples, batches, the model, and the helpers the rules share.
#
# The run's images are known at parse time (a folder, a glob or a sample sheet); the `samples` checkpoint
# reads each one's header and forms batches; every per-image rule then runs one job per batch, whose
# per-image files keep their names (RESULTS/masks/NAME.tif, ...) and whose manifest
# RESULTS/work/BATCH/STEP.tsv says which images succeeded (see cpsnake.run.batch).
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake import __version__ as SNAKEMAKE_VERSION
from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod


def fail(message):
    """Stop at parse time with one line `cpsnake workflow: error: MESSAGE` on stderr and exit status 1.

    A SystemExit, which Snakemake neither catches nor decorates: no "WorkflowError in file ..." header and
    no `File ".../common.smk", line N` frames follow the line (an exception raised here would get both).
    """
    print(
        f"cpsnake workflow: error: {' '.join(str(message).split())}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1)


try:
    from cpsnake.run import samples as sample_table
    from cpsnake.run.config import check as check_config, results_folder
    from cpsnake.errors import CpsnakeError
    from cpsnake.io.files import regular_file
except ImportError as exc:
    fail(
        f"cannot import cpsnake ({exc}); expected Snakemake to run in the environment where cpsnake is "
        "installed: use .venv/bin/snakemake after `make run` (or activate .venv), or `pip install -e .`"
    )


def typed(value, nested=False):
    """Snakemake's --config leaves every value inside a list or mapping a string ("3", "true", "0.5"):
    read those as YAML scalars, so --config 'batch={images: 3}' and channels=[0,2] mean what they say.
    """
    if isinstance(value, dict):
        return {k: typed(v, True) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v, True) for v in value]
    if nested and isinstance(value, str):
        import yaml

        try:
            return yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    return value


# the config, its defaults filled in as snakemake.utils.validate does; a problem is one line naming the key
config.update(typed(config))
try:
    if not workflow.modifier.skip_validation:
        check_config(config, workflow.source_path("../schemas/config.schema.yaml"))
    RESULTS = results_folder(config["results"])
except CpsnakeError as exc:
    fail(exc)
SAMPLES_TABLE = f"{RESULTS}/samples.tsv"
# registry names shipped with the repository in resources/models/NAME.pt
BUNDLED = ("nuclei_small", "nuclei_unet")
# registry names that `cpsnake weights fetch` downloads (sha256-checked) into resources/weights/
DOWNLOADABLE = ("cpsam", "cpsam_v2")

# The rules call this environment's own cpsnake (the Python that runs Snakemake, here and in cluster
# jobs), never whatever `cpsnake` is first on PATH; with --use-conda they call the conda env's.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    CPSNAKE = "cpsnake"
else:
    CPSNAKE = f"{shlex.quote(sys.executable)} -m cpsnake"


def parse_channels(value):
    """config channels as a list of distinct ints (or None): a list, a string "0,2" or one number (the schema
    has checked the form; a repeated channel is one line here)."""
    if value is None or isinstance(value, list):
        channels = value
    elif isinstance(value, int):
        channels = [value]
    else:
        channels = [int(c) for c in str(value).replace(" ", "").split(",") if c != ""]
    if channels is not None and len(set(channels)) != len(channels):
        fail(
            f"config channels: found {value!r}, which repeats a channel; expected distinct channel numbers "
            "such as 0,2; fix channels in the config file or --config"
        )
    return channels


CHANNELS = parse_channels(config["channels"])


def listed_samples():
    """The run's samples at parse time: the sample sheet (cpsnake.run.samples.read_sheet: a regular file, checked
    cell by cell), or the images folder / glob; a problem is one line."""
    try:
        if config["samples"]:
            return sample_table.read_sheet(config["samples"])
        return sample_table.discover(config["images"])
    except CpsnakeError as exc:
        key = "samples" if config["samples"] else "images"
        fail(
            f"config {exc}"
            if str(exc).startswith(f"{key}=")
            else f"config {key}: {exc}"
        )


LISTED = listed_samples()


def check_bounds():
    """The config values that become command-line options, against the options' bounds (cpsnake.bounds), and
    the run's job count as far as the listed images tell it (their headers come with the samples checkpoint,
    see table()): one line naming the config key, before any job runs."""
    from cpsnake import bounds

    try:
        bounds.check_config(config)
        batches = -(
            -len(LISTED) // int(config["batch"]["images"])
        )  # at least this many
        bounds.check_jobs(batches, images=len(LISTED), at_least=True)
    except CpsnakeError as exc:
        fail(exc)


check_bounds()


def resolve_model(spec):
    """(model file, model name): an existing path, a bundled name, or a name the `weights` rule downloads."""
    import difflib

    expected = f"a path to a .pt file or one of {', '.join(BUNDLED + DOWNLOADABLE)}"
    if Path(spec).is_file():
        return spec, Path(spec).stem
    if (
        os.sep in spec
        or spec.endswith(".pt")
        or (os.path.lexists(spec) and not os.path.isdir(spec))
    ):
        try:  # a path that is not a regular file: missing, a FIFO, a device, a broken link (stat only)
            regular_file(spec, f"a model: {expected}")
        except CpsnakeError as exc:
            fail(f"config model: {exc}")
    bundled = Path("resources/models") / f"{spec}.pt"
    if bundled.is_file():
        return str(bundled), spec
    if spec in DOWNLOADABLE:
        return f"resources/weights/{spec}", spec
    # a bundled name missing from this checkout: Snakemake reports the missing input file
    if spec in BUNDLED:
        return str(bundled), spec
    close = difflib.get_close_matches(spec, BUNDLED + DOWNLOADABLE, n=1)
    fail(
        f"config model={spec!r}: found neither a file nor a registry name; expected {expected}; "
        + (f"did you mean {close[0]!r}? " if close else "")
        + "fix model in the config file or --config"
    )


MODEL_FILE, MODEL_NAME = resolve_model(config["model"])


wildcard_constraints:
    batch=r"b[0-9]+",


# --- samples and batches (known once the `samples` checkpoint has run) --------------------------------


def samples_source():
    """`cpsnake samples` arguments naming where the samples come from."""
    if config["samples"]:
        return f"--sheet {shlex.quote(config['samples'])}"
    return f"--images {shlex.quote(config['images'])}"


def listing():
    """Every listed sample with its options: a change reruns the checkpoint (a param, not a file)."""
    return json.dumps(
        [[s.sample, s.path, s.channels, s.diameter, s.pixel_size] for s in LISTED]
    )


def table(wildcards=None):
    """The samples table (after the checkpoint; `cpsnake samples` has checked the run's job count)."""
    return sample_table.read_table(checkpoints.samples.get().output[0])


def batches(wildcards=None):
    """The run's batches, in order."""
    return sorted({s.batch for s in table() if s.batch})


def rows(wildcards):
    """The samples of one batch."""
    return [s for s in table() if s.batch == wildcards.batch]


def batch_images(wildcards):
    """The image files of one batch (so a changed image reruns its batch only)."""
    return [s.path for s in rows(wildcards)]


def batch_signature(wildcards):
    """The batch's samples and their options: a change reruns the batch's jobs."""
    return json.dumps(
        [
            [s.sample, s.path, s.channels, s.diameter, s.pixel_size]
            for s in rows(wildcards)
        ]
    )


def per_batch(pattern):
    """Input function: `pattern` ({batch}) for every batch of the run."""

    def paths(wildcards):
        return [pattern.format(batch=b) for b in batches()]

    return paths


def work(step):
    """RESULTS/work/{batch}/STEP.tsv, the manifest of a step."""
    return f"{RESULTS}/work/{{batch}}/{step}.tsv"


def results_of(wildcards, output):
    """The results folder, from a rule's first output (RESULTS/NAME)."""
    return os.path.dirname(output[0]) or os.curdir


def intermediate(path, key):
    """`path`, temporary unless config keep.KEY is true."""
    return path if config["keep"][key] else temp(path)


# --- options from config ---------------------------------------------------------------------------


def batch_args(step):
    """`cpsnake batch STEP SAMPLES BATCH --results RESULTS` (the batch filled in by Snakemake)."""
    return f"{CPSNAKE} batch {step} {shlex.quote(SAMPLES_TABLE)} {{wildcards.batch}} --results {shlex.quote(RESULTS)}"


def normalize_args():
    """`cpsnake normalize` options from config."""
    cfg = config["normalize"]
    args = ["--percentiles", *map(str, cfg["percentiles"])]
    if CHANNELS is not None:
        args += ["--channels", ",".join(map(str, CHANNELS))]
    if cfg["low_high"] is not None:
        args += ["--low-high", *map(str, cfg["low_high"])]
    if cfg["invert"]:
        args.append("--invert")
    if cfg["tile_norm"]:
        args += ["--tile-norm", str(cfg["tile_norm"])]
    return " ".join(args + [stack_args()]).strip()


def limit_args():
    """`--max-pixels N` from config max_pixels (every step that reads images, labels or flows)."""
    return f"--max-pixels {int(config['max_pixels'])}"


def diameter_args():
    """`--diameter D` when config diameter is set (a sample sheet's diameter overrides it per image)."""
    return "" if config["diameter"] is None else f"--diameter {config['diameter']}"


def infer_args():
    """`cpsnake infer` options from config (device and threads come from resources, not config)."""
    cfg = config["inference"]
    args = [f"--tile-overlap {cfg['tile_overlap']}", diameter_args()]
    if cfg["augment"]:
        args.append("--augment")
    return " ".join(a for a in args + [stack_args()] if a)


def reconstruct_args():
    """`cpsnake reconstruct` options from config."""
    cfg = config["reconstruct"]
    args = [
        f"--cellprob-threshold {cfg['cellprob_threshold']}",
        f"--flow-threshold {cfg['flow_threshold']}",
        f"--min-size {cfg['min_size']}",
        f"--max-size-fraction {cfg['max_size_fraction']}",
        diameter_args(),
    ]
    if cfg["niter"] is not None:
        args.append(f"--niter {cfg['niter']}")
    return " ".join(a for a in args + [stack_args()] if a)


def stack_args():
    """The stack options from config `stacks` (every per-image step takes them: each uses its own)."""
    cfg = config["stacks"]
    if cfg["do_3d"] and cfg["stitch_threshold"] > 0:
        fail(
            f"config stacks: found do_3d true and stitch_threshold {cfg['stitch_threshold']}; expected one of them "
            "(3-D, or 2-D planes stitched); set stacks.do_3d false or stacks.stitch_threshold 0"
        )
    args = []
    if cfg["do_3d"]:
        args.append("--do-3d")
        if cfg["anisotropy"] is not None:
            args.append(f"--anisotropy {cfg['anisotropy']}")
        smooth = cfg["flow3d_smooth"]
        args.append(
            "--flow3d-smooth "
            + " ".join(map(str, smooth if isinstance(smooth, list) else [smooth]))
        )
        args.append(f"--flow3d-threshold {cfg['flow3d_threshold']}")
    if cfg["stitch_threshold"] > 0:
        args.append(f"--stitch-threshold {cfg['stitch_threshold']}")
    if cfg["track"]:
        args.append(f"--track --track-threshold {cfg['track_threshold']}")
    return " ".join(args)


def block_size_args():
    """`--block-size N` for `cpsnake samples` when config blocks.size is set (else its automatic rule)."""
    size = config["blocks"]["size"]
    return "" if size is None else f"--block-size {int(size)}"


def block_args():
    """`cpsnake block` options from config: inference and reconstruction (no stack options), the halo."""
    cfg, rcfg = config["inference"], config["reconstruct"]
    args = [f"--tile-overlap {cfg['tile_overlap']}", diameter_args()]
    if cfg["augment"]:
        args.append("--augment")
    args += [
        f"--cellprob-threshold {rcfg['cellprob_threshold']}",
        f"--flow-threshold {rcfg['flow_threshold']}",
        f"--max-size-fraction {rcfg['max_size_fraction']}",
    ]
    if rcfg["niter"] is not None:
        args.append(f"--niter {rcfg['niter']}")
    if config["blocks"]["halo"] is not None:
        args.append(f"--block-halo {int(config['blocks']['halo'])}")
    return " ".join(a for a in args if a)


def block_files(wildcards):
    """The block files of the batch's images segmented in blocks (none for the others): the grid of each
    comes from its header (the samples table), so the block jobs are known when the DAG is built.
    """
    from cpsnake.run.blockjob import grid_of

    return [
        f"{RESULTS}/work/{wildcards.batch}/blocks/{s.sample}/{k}.npz"
        for s in rows(wildcards)
        if s.block
        for k in range(len(grid_of(s.height, s.width, s.block)))
    ]


def block_sample(wildcards):
    """The samples-table row of a block job's image."""
    found = [s for s in rows(wildcards) if s.sample == wildcards.sample]
    if not found or not found[0].block:
        raise WorkflowError(
            f"block job for {wildcards.sample!r} in batch {wildcards.batch}: no such image in blocks"
        )
    return found[0]


def block_mem_mb(wildcards):
    """Memory request of a block job: the block's, not the image's (cpsnake.run.jobmem)."""
    from cpsnake.run.jobmem import block_job_mb

    s = block_sample(wildcards)
    return block_job_mb(s.block, config["blocks"]["halo"], s.channels_in_file)


def mem_mb(step):
    """Memory request of a batch job of ``step``: the most any image of the batch needs (they are processed
    one after the other); an image in blocks needs its block's, not its own (cpsnake.run.jobmem).
    """
    from cpsnake.run.jobmem import step_mb

    def request(wildcards):
        return max(
            (
                step_mb(
                    step,
                    pixels=s.pixels or 0,
                    width=s.width or 0,
                    channels=s.channels_in_file,
                    block=s.block,
                    halo=config["blocks"]["halo"],
                )
                for s in rows(wildcards)
            ),
            default=step_mb(step, pixels=0, width=0, channels=1),
        )

    return request


def all_outputs():
    """Everything `rule all` asks for."""
    return [
        f"{RESULTS}/measurements.csv",
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/failed.csv",
        f"{RESULTS}/provenance.json",
        f"{RESULTS}/work/check.done",
    ]
