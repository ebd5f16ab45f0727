# Sample discovery, model resolution and the helpers the rules share.
import glob
import json
import os
import re
from pathlib import Path

from snakemake import __version__ as SNAKEMAKE_VERSION
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = "results"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# registry names shipped with the repository in resources/models/NAME.pt
BUNDLED = ("nuclei_small",)
# registry names that `cpsnake weights fetch` downloads (sha256-checked) into resources/weights/
DOWNLOADABLE = ("cpsam", "cpsam_v2")


def find_images(spec):
    """Map sample name -> image path for a folder or a glob pattern (sorted by name)."""
    if Path(spec).is_dir():
        files = [p for p in sorted(Path(spec).iterdir()) if p.is_file()]
        files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        files = [p for p in files if not p.name.startswith(".")]
    else:
        files = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        files = [p for p in files if p.is_file()]
    if not files:
        raise WorkflowError(
            f"config images={spec!r}: found no image files, expected a folder holding "
            f"{'/'.join(IMAGE_SUFFIXES)} files or a glob matching files; set `images` in config.yaml "
            "or pass --config images=PATH"
        )
    samples = {}
    for path in files:
        name = re.sub(r"\.ome$", "", path.stem)
        if name in samples:
            raise WorkflowError(
                f"config images={spec!r}: found two files named {name!r} ({samples[name]}, {path}), "
                "expected unique names; rename one or narrow the glob"
            )
        samples[name] = str(path)
    return samples


def resolve_model(spec):
    """(model file, model name): an existing path, a bundled name, or a name the `weights` rule downloads."""
    if Path(spec).is_file():
        return spec, Path(spec).stem
    bundled = Path("resources/models") / f"{spec}.pt"
    if bundled.is_file():
        return str(bundled), spec
    if spec in DOWNLOADABLE:
        return f"resources/weights/{spec}", spec
    # a bundled name missing from this checkout: Snakemake reports the missing input file
    if spec in BUNDLED:
        return str(bundled), spec
    raise WorkflowError(
        f"config model={spec!r}: found neither a file nor a registry name, expected a path to a .pt "
        f"file or one of {', '.join(BUNDLED + DOWNLOADABLE)}; fix `model` in config.yaml"
    )


SAMPLES = find_images(config["images"])
MODEL_FILE, MODEL_NAME = resolve_model(config["model"])


wildcard_constraints:
    sample="|".join(re.escape(s) for s in SAMPLES),


def image_of(wildcards):
    """The input image of one sample."""
    return SAMPLES[wildcards.sample]


def intermediate(path, key):
    """`path`, temporary unless config keep.KEY is true."""
    return path if config["keep"][key] else temp(path)


def normalize_args():
    """`cpsnake normalize` options from config."""
    cfg = config["normalize"]
    args = ["--percentiles", *map(str, cfg["percentiles"])]
    if config["channels"] is not None:
        args += ["--channels", ",".join(map(str, config["channels"]))]
    if cfg["low_high"] is not None:
        args += ["--low-high", *map(str, cfg["low_high"])]
    if cfg["invert"]:
        args.append("--invert")
    if cfg["tile_norm"]:
        args += ["--tile-norm", str(cfg["tile_norm"])]
    return " ".join(args)


def limit_args():
    """`--max-pixels N` from config max_pixels (every step that reads images, labels or flows)."""
    return f"--max-pixels {int(config['max_pixels'])}"


def diameter_args():
    """`--diameter D` when config diameter is set."""
    return "" if config["diameter"] is None else f"--diameter {config['diameter']}"


def infer_args():
    """`cpsnake infer` options from config (device and threads come from resources, not config)."""
    cfg = config["inference"]
    args = [f"--tile-overlap {cfg['tile_overlap']}", diameter_args()]
    if cfg["augment"]:
        args.append("--augment")
    return " ".join(a for a in args if a)


def infer_device(wildcards, resources):
    """`cuda` when the job was given a GPU (resources gpu > 0), else `auto`."""
    return "cuda" if int(resources.get("gpu", 0)) > 0 else "auto"


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
    return " ".join(a for a in args if a)


def mem_mb(base, per_input_mb):
    """Memory request growing with the size of the job's input files: base + per_input_mb * MB in."""

    def request(wildcards, input):
        # plain file sizes: Snakemake evaluates input.size_mb in its own async loop, which it cannot always nest
        size = sum(os.path.getsize(f) for f in input if os.path.exists(f))
        return int(base + per_input_mb * size / 1e6)

    return request


def per_sample(pattern):
    """`pattern` expanded over every sample."""
    return expand(pattern, sample=sorted(SAMPLES))


def all_outputs():
    """Everything `rule all` asks for."""
    return [
        *per_sample(f"{RESULTS}/masks/{{sample}}.tif"),
        *per_sample(f"{RESULTS}/rois/{{sample}}.zip"),
        *per_sample(f"{RESULTS}/measurements/{{sample}}.csv"),
        *per_sample(f"{RESULTS}/overlays/{{sample}}.png"),
        f"{RESULTS}/measurements.csv",
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/provenance.json",
    ]
