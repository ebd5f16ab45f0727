"""``cpsnake provenance OUT.json ...``: the provenance record of a workflow run.

    cpsnake provenance results/provenance.json --model resources/models/nuclei_small.pt \\
        --model-name nuclei_small --config-json '{"diameter": null, ...}' \\
        --images a.tif b.tif --normalization results/normalized/a.json results/normalized/b.json

The JSON file holds: ``created`` (UTC time, the one field that differs between identical runs),
``cpsnake`` (version), ``python`` and ``platform``, ``packages`` (installed versions of cpsnake's
dependencies, plus Snakemake's when given), ``model`` (name, file, size in bytes, sha256),
``parameters`` (the whole workflow config), and ``images``: for each, its name, path, sha256 and the
normalization values used (the JSON ``cpsnake normalize`` wrote beside the normalized image).
``--images`` and ``--normalization`` are matched by order.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from importlib import metadata

from cpsnake.errors import CpsnakeError, guard

__all__ = ["sha256", "package_versions", "build_record", "main"]


def sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file, read in chunks (a FIFO or device is refused with one line, not read forever)."""
    from cpsnake import files

    return files.sha256(path, expected="an input of the run (image or model file)", chunk=chunk)


def package_versions() -> dict[str, str | None]:
    """Installed versions of cpsnake and of every dependency its metadata declares (None if absent)."""
    names = ["cpsnake"]
    try:
        for req in metadata.requires("cpsnake") or []:
            if "extra ==" in req:  # optional extras are not part of a run
                continue
            names.append(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0])
    except metadata.PackageNotFoundError:
        pass
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_record(
    *,
    model: str,
    model_name: str,
    config: dict,
    images: list[str],
    normalization: list[dict],
    snakemake_version: str | None = None,
) -> dict:
    """The provenance dictionary (see the module docstring); ``images`` and ``normalization`` pair by index."""
    from cpsnake import __version__
    from cpsnake.aggregate import image_name

    packages = package_versions()
    if snakemake_version:
        packages["snakemake"] = snakemake_version
    entries = []
    for path, values in zip(images, normalization):
        entries.append({"name": image_name(path), "path": str(path), "sha256": sha256(path), "normalization": values})
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpsnake": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "model": {"name": model_name, "file": str(model), "bytes": os.path.getsize(model), "sha256": sha256(model)},
        "parameters": config,
        "images": entries,
    }


@guard("provenance")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpsnake provenance", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output JSON file")
    parser.add_argument("--model", required=True, help="the model file used")
    parser.add_argument("--model-name", required=True, help="its registry name (or file stem)")
    parser.add_argument("--config-json", default="{}", help="the workflow config as JSON")
    parser.add_argument("--snakemake-version", default=None)
    parser.add_argument("--images", nargs="*", default=[], help="input images")
    parser.add_argument("--normalization", nargs="*", default=[], help="cpsnake normalize JSON files, one per image")
    args = parser.parse_args(argv)

    if len(args.images) != len(args.normalization):
        raise CpsnakeError(
            f"--images / --normalization: found {len(args.images)} images and {len(args.normalization)} "
            "normalization files; expected one normalization file per image, in the same order"
        )
    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise CpsnakeError(f"--config-json: found invalid JSON ({exc}); expected the config as a JSON object") from None
    from cpsnake import files

    for path in [args.model, *args.images, *args.normalization]:
        files.regular_file(path, "an input of the run")
    values = []
    for path in args.normalization:
        what = "the values file (JSON) `cpsnake normalize` writes"
        try:
            values.append(json.loads(files.read_text(path, what, limit=64 * 2**20)))
        except json.JSONDecodeError as exc:
            raise CpsnakeError(f"{path}: found invalid JSON ({exc}); expected {what}; run `cpsnake normalize` again") from None
    record = build_record(
        model=args.model,
        model_name=args.model_name,
        config=config,
        images=args.images,
        normalization=values,
        snakemake_version=args.snakemake_version,
    )
    from cpsnake.io import atomic_output

    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
