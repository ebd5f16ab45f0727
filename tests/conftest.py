"""Fixtures shared by several test files, and the CI rule that a skipped test fails (tests/ci_skips.py)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from paths import ROOT, TESTS

pytest_plugins = ["ci_skips", "pytester"]

CP3 = Path(os.environ.get("CPSNAKE_CELLPOSE3", ROOT / ".venv" / "cellpose3"))
SCRIPT = TESTS / "cellpose3" / "reference.py"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A seeded random-weights ``tiny`` Cellpose-SAM network saved as a cellpose-4 state dict.

    It finds nothing at the default thresholds; with ``flow_threshold 0`` and ``cellprob_threshold -0.5``
    it finds (nonsense) cells, which is enough to exercise every step and table.
    """
    import torch

    from cpsnake.models.cpsam import build_cpsam
    from cpsnake.models.state import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(build_cpsam("tiny"), path)
    return path


@pytest.fixture(scope="session")
def cp3(tmp_path_factory):
    """Run one cellpose 3 reference op (see tests/cellpose3/reference.py); returns its outputs.

    One ``reference.py --serve`` process answers every op of the session (importing cellpose 3 costs ~9 s).
    """
    if not (CP3 / "cellpose").is_dir():
        pytest.skip(f"cellpose 3.1.1.3 is not in {CP3}: make .venv/cellpose3/.installed")
    tmp = tmp_path_factory.mktemp("cp3")
    log = tmp / "server.log"
    log_file = open(log, "ab")
    server = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**os.environ, "PYTHONPATH": str(CP3)},
    )
    count = [0]

    def run(op: str, **args) -> dict:
        count[0] += 1
        req = tmp / f"req{count[0]}.json"
        out = tmp / f"out{count[0]}.npz"
        req.write_text(json.dumps({"op": op, "out": str(out), **args}))
        start = log.stat().st_size
        server.stdin.write(f"{req}\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], 900)
        answer = server.stdout.readline().strip() if ready else "no answer within 900 s"
        assert answer == "ok", (
            f"cellpose 3 reference op {op!r}: {answer or 'server exited'}\n"
            f"{log.read_bytes()[start:][-3000:].decode(errors='replace')}"
        )
        return dict(np.load(out)) if out.exists() else {}

    yield run
    server.stdin.close()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
    log_file.close()


@pytest.fixture(scope="session")
def unet_file(tmp_path_factory):
    """A small seeded random U-Net (diam_mean 17 as cellpose's nuclei models, diam_labels 17) saved as cellpose does."""
    import torch

    from cpsnake.models.unet import build_unet

    torch.manual_seed(0)
    net = build_unet(nbase=(2, 8, 16, 32), diam_mean=17.0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.fill_(0.5)
    path = tmp_path_factory.mktemp("unet") / "unet17.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def opencv_without_ipp():
    """cellpose resizes with cv2.resize; with Intel IPP on (the wheel's default) OpenCV takes IPP's bilinear
    code for 1, 3 and 4 channels, whose sample positions differ by up to ~3e-5 px from OpenCV's own
    INTER_LINEAR (which we reproduce). Compare against OpenCV's own code."""
    import cv2

    was = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield cv2
    cv2.ipp.setUseIPP(was)
