"""``cpsnake provenance OUT.json ...``: the provenance record of a workflow run.

    cpsnake provenance results/provenance.json --samples results/samples.tsv --results results \
        --model resources/models/nuclei_small.pt --model-name nuclei_small --config-json '{"diameter": null, ...}'

The JSON file holds: ``created`` (UTC time, the one field that differs between identical runs),
``cpsnake`` (version), ``python`` and ``platform``, ``packages`` (installed versions of cpsnake's
dependencies, plus Snakemake's when given), ``model`` (name, file, size in bytes, sha256, family:
``cpsam`` or ``unet``),
``parameters`` (the whole workflow config), ``images``: for each image that was normalized, its name,
path, sha256, its own options from a sample sheet (channels, diameter, pixel_size; null when the run's
apply), the normalization values used (the record ``cpsnake normalize`` writes) and ``diameter_used``
(the diameter the network ran at, px: the one given, or the estimate of ``diameter: auto``; null for
the image's own scale), and ``failed``:
each image that failed, with the step and the reason (as failed.csv).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import stat
import sys
from importlib import metadata
from pathlib import Path

from cpsnake.errors import CpsnakeError, guard
from cpsnake.io import files
from cpsnake.io.omezarr import is_ome_zarr

__all__ = ["folder_sha256", "package_versions", "build_record", "main"]


def _input_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of an input of the run: a regular file (:func:`cpsnake.io.files.sha256`; a FIFO or device is
    refused with one line, not read forever) or an OME-Zarr folder (:func:`folder_sha256`)."""
    if is_ome_zarr(path):
        return folder_sha256(path)
    return files.sha256(path, expected="an input of the run (image or model file)")


def folder_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a folder (an OME-Zarr): over its entries in sorted order (by path components), each entry's
    relative path, a NUL byte, then the sha256 (32 bytes) of a regular file's contents; a symbolic link adds
    ``b"link:" + its target`` instead and is never followed (so a link out of the folder is not read), and a
    FIFO, device or socket adds ``b"special"`` without being opened (so nothing hangs). Sub-folders are walked
    (links to folders are not). A folder of regular files only hashes as it always did."""
    root = Path(path)
    entries = []
    for top, dirs, names in os.walk(root, followlinks=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            f = Path(top, name)
            entries.append((f.relative_to(root).parts, f))
    h = hashlib.sha256()
    for parts, f in sorted(entries, key=lambda e: e[0]):
        mode = os.lstat(f).st_mode
        h.update("/".join(parts).encode(errors="surrogateescape") + b"\0")
        if stat.S_ISLNK(mode):
            h.update(b"link:" + os.fsencode(os.readlink(f)))
        elif stat.S_ISREG(mode):
            h.update(bytes.fromhex(files.sha256(f, expected="a file of an OME-Zarr input", chunk=chunk)))
        else:
            h.update(b"special")
    return h.hexdigest()


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


def model_family(path: str | os.PathLike) -> str:
    """``cpsam`` or ``unet``: the model file's family, from its keys (memory-mapped, checked, weights-only)."""
    from cpsnake.models.registry import family_of
    from cpsnake.models.state import load_state_dict_file

    return family_of(load_state_dict_file(path), str(path))


def build_record(
    *,
    model: str,
    model_name: str,
    config: dict,
    images: list[dict],
    failed: list[dict] | None = None,
    snakemake_version: str | None = None,
) -> dict:
    """The provenance dictionary (see the module docstring).

    ``images``: one dict per image with at least ``name`` and ``path`` (hashed here) and whatever else
    describes it (options, ``normalization``), kept in order.
    """
    from cpsnake import __version__

    packages = package_versions()
    if snakemake_version:
        packages["snakemake"] = snakemake_version
    entries = [
        {
            "name": e["name"],
            "path": str(e["path"]),
            "sha256": _input_sha256(e["path"]),
            **{k: v for k, v in e.items() if k not in ("name", "path")},
        }
        for e in images
    ]
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpsnake": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "model": {
            "name": model_name,
            "file": str(model),
            "bytes": os.path.getsize(model),
            "sha256": _input_sha256(model),
            "family": model_family(model),
        },
        "parameters": config,
        "images": entries,
        "failed": list(failed or []),
    }


@guard("provenance")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpsnake provenance", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output JSON file")
    parser.add_argument("--model", required=True, help="the model file used")
    parser.add_argument("--model-name", required=True, help="its registry name (or file stem)")
    parser.add_argument("--config-json", default="{}", help="the workflow config as JSON")
    parser.add_argument("--snakemake-version", default=None)
    parser.add_argument("--samples", required=True, help="the samples table (`cpsnake samples`)")
    parser.add_argument("--results", required=True, help="the results folder (work/BATCH/normalize.tsv)")
    args = parser.parse_args(argv)

    try:
        config = json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise CpsnakeError(f"--config-json: found invalid JSON ({exc}); expected the config as a JSON object") from None
    from cpsnake.io import files
    from cpsnake.run.aggregate import outcomes

    files.regular_file(args.model, "the model file of the run")
    table, by_step, failed = outcomes(args.samples, args.results)
    images = []
    for s in table:
        done = by_step[s.sample].get("normalize")
        if done is None or done.status != "ok":
            continue
        inferred = by_step[s.sample].get("infer")
        images.append(
            {
                "name": s.sample,
                "path": s.path,
                "options": {"channels": s.channels, "diameter": s.diameter, "pixel_size": s.pixel_size},
                "normalization": done.info.get("normalization"),
                "diameter_used": inferred.info.get("diameter") if inferred and inferred.status == "ok" else None,
            }
        )
    record = build_record(
        model=args.model,
        model_name=args.model_name,
        config=config,
        images=images,
        failed=failed,
        snakemake_version=args.snakemake_version,
    )
    from cpsnake.io.outputs import atomic_output

    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
