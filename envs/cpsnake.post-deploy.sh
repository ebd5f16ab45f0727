#!/usr/bin/env bash
# Snakemake runs this inside the new conda env, from the workflow's working directory (the repository
# root for `make run`). Installs the cpsnake package (the `cpsnake` command the rules call) without
# touching the dependencies the env file pinned. Set CPSNAKE_SOURCE when running from another directory.
set -euo pipefail
python -m pip install --no-deps -e "${CPSNAKE_SOURCE:-.}"
