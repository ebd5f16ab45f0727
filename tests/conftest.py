"""Fixtures shared by several test files, and the CI rule that a skipped test fails (tests/ci_skips.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["ci_skips", "pytester"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A seeded random-weights ``tiny`` Cellpose-SAM network saved as a cellpose-4 state dict.

    It finds nothing at the default thresholds; with ``flow_threshold 0`` and ``cellprob_threshold -0.5``
    it finds (nonsense) cells, which is enough to exercise every step and table.
    """
    import torch

    from cpsnake.models import build_cpsam, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(build_cpsam("tiny"), path)
    return path

