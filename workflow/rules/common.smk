# Samples, batches, the model, and the helpers the rules share.
#
# The run's images are known at parse time (a folder, a glob or a sample sheet); the `samples` checkpoint
# reads each one's header and forms batches; every per-image rule then runs one job per batch, whose
# per-image files keep their names (RESULTS/masks/NAME.tif, ...) and whose manifest
# RESULTS/work/BATCH/STEP.tsv says which images succeeded (see cpsnake.run.batch). The model, where the
# run's files lie and each rule's options come from the package (cpsnake.run.workflow_args), never from
# copies here.
import json
import os
import shlex
import sys

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
    from cpsnake import bounds
    from cpsnake.run import samples as sample_table
    from cpsnake.run import workflow_args
    from cpsnake.run.config import check as check_config, results_folder
    from cpsnake.run.jobmem import block_job_mb, step_mb
    from cpsnake.errors import CpsnakeError
except ImportError as exc:
    fail(
        f"cannot import cpsnake ({exc}); expected Snakemake to run in the environment where cpsnake is "
        "installed: use .venv/bin/snakemake after `make run` (or activate .venv), or `pip install -e .`"
    )


def ask(function, *args):
    """``function(*args)`` of cpsnake (the run's model, layout and step arguments: cpsnake.run.workflow_args);
    its CpsnakeError is the run's one line."""
    try:
        return function(*args)
    except CpsnakeError as exc:
        fail(exc)


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
# where the run's files lie (cpsnake.run.layout), with the wildcards {batch}, {sample}, {k}
LAYOUT = workflow_args.patterns(RESULTS)
SAMPLES_TABLE = LAYOUT.samples_table

# The rules call this environment's own cpsnake (the Python that runs Snakemake, here and in cluster
# jobs), never whatever `cpsnake` is first on PATH; with --use-conda they call the conda env's.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    CPSNAKE = "cpsnake"
else:
    CPSNAKE = f"{shlex.quote(sys.executable)} -m cpsnake"


CHANNELS = ask(workflow_args.channels, config["channels"])


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
    try:
        bounds.check_config(config)
        batches = -(
            -len(LISTED) // int(config["batch"]["images"])
        )  # at least this many
        bounds.check_jobs(batches, images=len(LISTED), at_least=True)
    except CpsnakeError as exc:
        fail(exc)


check_bounds()

# the model file and name: a registry name wins over a file of that name, as on the command line
MODEL_FILE, MODEL_NAME = ask(workflow_args.model, config["model"])


wildcard_constraints:
    batch=workflow_args.BATCH_PATTERN,


# --- samples and batches (known once the `samples` checkpoint has run) --------------------------------


def listing():
    """Every listed sample with its options: a change reruns the checkpoint (a param, not a file)."""
    return workflow_args.signature(LISTED)


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
    return workflow_args.signature(rows(wildcards))


def per_batch(pattern):
    """Input function: `pattern` ({batch}) for every batch of the run."""

    def paths(wildcards):
        return [pattern.format(batch=b) for b in batches()]

    return paths


def work(step):
    """RESULTS/work/{batch}/STEP.tsv, the manifest of a step."""
    return LAYOUT.manifest(step)


def results_of(wildcards, output):
    """The results folder, from a rule's first output (RESULTS/NAME)."""
    return os.path.dirname(output[0]) or os.curdir


def intermediate(path, key):
    """`path`, temporary unless config keep.KEY is true."""
    return path if config["keep"][key] else temp(path)


# --- options from config (cpsnake.run.workflow_args) --------------------------------------------------


def batch_args(step):
    """`cpsnake batch STEP SAMPLES BATCH --results RESULTS` (the batch filled in by Snakemake)."""
    return workflow_args.batch_command(CPSNAKE, step, SAMPLES_TABLE, RESULTS)


def step_args(function):
    """A step's options from config (`workflow_args.normalize_args`, ...); a problem is one line."""
    return ask(function, config)


def block_files(wildcards):
    """The block files of the batch's images segmented in blocks (none for the others): the grid of each
    comes from its header (the samples table), so the block jobs are known when the DAG is built.
    """
    return workflow_args.block_files(RESULTS, wildcards.batch, rows(wildcards))


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
    s = block_sample(wildcards)
    return block_job_mb(s.block, config["blocks"]["halo"], s.channels_in_file)


def mem_mb(step):
    """Memory request of a batch job of ``step``: the most any image of the batch needs (they are processed
    one after the other); an image in blocks needs its block's, not its own (cpsnake.run.jobmem).
    """

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
