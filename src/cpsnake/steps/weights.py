"""``cpsnake weights list|fetch``: the weights registry and its cache on the command line.

Usage::

    cpsnake weights list  [--cache-dir D]
    cpsnake weights fetch NAME [--cache-dir D] [--base-url URL] [--revision REV] [--quiet]   # prints the path

``list`` shows each registry name, its size, its cache state and where it comes from (never hashing a
download, never using the network); ``fetch`` downloads and verifies a name and prints the file's path. The
registry, the cache and the checks are :mod:`cpsnake.models.weights`.
"""

from __future__ import annotations

import argparse
import sys

from cpsnake.errors import CpsnakeError, guard
from cpsnake.models import weights

__all__ = ["DESCRIPTION", "main"]

DESCRIPTION = "Model weights: a registry of names, a sha256-checked download cache, ``cpsnake weights list|fetch``."


@guard("weights")
def main(argv: list[str] | None = None) -> int:
    """``cpsnake weights list|fetch``."""
    p = argparse.ArgumentParser(prog="cpsnake weights", description=DESCRIPTION)
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="registry names, sizes, source, cache state")
    pl.add_argument("--cache-dir", help="cache folder (default: $CPSNAKE_CACHE or ~/.cache/cpsnake)")
    pf = sub.add_parser("fetch", help="download and verify NAME; print the file's path")
    pf.add_argument("name", help="registry name (see `cpsnake weights list`)")
    pf.add_argument("--cache-dir", help="cache folder (default: $CPSNAKE_CACHE or ~/.cache/cpsnake)")
    pf.add_argument(
        "--base-url", help="download folder URL of a mirror (default: $CPSNAKE_WEIGHTS_URL or Hugging Face)"
    )
    pf.add_argument(
        "--revision", help=f"Hugging Face revision (default: $CPSNAKE_WEIGHTS_REVISION or {weights.REVISION})"
    )
    pf.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.cmd == "list":
        cache = weights.cache_dir_default(args.cache_dir)
        rows = [
            (name, weights.human_size(e.size), *weights.entry_status(e, cache)) for name, e in weights.REGISTRY.items()
        ]
        head = ("NAME", "SIZE", "STATUS", "SOURCE")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        print(f"cache: {cache}")
        return 0
    if args.name not in weights.REGISTRY:
        raise CpsnakeError(f"model {args.name!r}: unknown name, expected one of {', '.join(weights.REGISTRY)}")
    path = weights.resolve(
        args.name, cache_dir=args.cache_dir, base_url=args.base_url, revision=args.revision, progress=not args.quiet
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
