"""Shared tools of the hostile-input tests (tests/test_hostile*.py): run a command in a capped child process,
assert one complete error line and no outputs, and build hostile files (TIFF / PNG bytes, ROI zips, FIFOs).

Commands that could hang or allocate run in a child process with a timeout and a data-segment limit
(``RLIMIT_DATA``, 4 GiB) so that a regression fails the test instead of swapping the machine.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from paths import DATA as TEST_DATA

from cpsnake.cli import main as cli_main

DATA = TEST_DATA / "images"
GREY16 = DATA / "bbbc039_O13_s3_uint16.tif"
RSS_LIMIT_MB = 1024
DATA_LIMIT = 4 * 2**30
HELPER = r"""
import json, resource, subprocess, sys
limit, timeout, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
try:
    r = subprocess.run(cmd, preexec_fn=cap, capture_output=True, text=True, timeout=timeout)
    rc, err = r.returncode, r.stderr
except subprocess.TimeoutExpired:
    rc, err = "timeout", ""
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": rc, "stderr": err, "rss_mb": rss}))
"""


@dataclass
class Run:
    rc: int | str
    stderr: str
    rss_mb: float


def cpsnake(*args, timeout: float = 120) -> Run:
    """``python -m cpsnake ARGS`` in a fresh helper process (RLIMIT_DATA 4 GiB); exit code, stderr, peak RSS (MB).

    A command still running after ``timeout`` seconds is killed and reported as ``rc == "timeout"``.
    """
    cmd = [
        sys.executable,
        "-c",
        HELPER,
        str(DATA_LIMIT),
        str(timeout),
        sys.executable,
        "-m",
        "cpsnake",
        *map(str, args),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
    data = json.loads(proc.stdout)
    return Run(data["rc"], data["stderr"], data["rss_mb"])


def in_process(capsys, *args) -> Run:
    """``cpsnake ARGS`` in this process (for commands that can neither hang nor allocate much)."""
    rc = cli_main([str(a) for a in args])
    return Run(rc, capsys.readouterr().err, math.nan)


def new_paths(args) -> list[Path]:
    """The path arguments that do not exist yet: the outputs a command would write."""
    return [Path(a) for a in args if isinstance(a, Path) and not os.path.lexists(a)]


def assert_one_error_line(run: Run, step: str, *names, pattern: str | None = None) -> str:
    """Exit code 1, exactly one stderr line ``cpsnake STEP: error: ...`` that names every one of ``names``
    (``cpsnake segment`` adds its count of failed images after it)."""
    import re

    assert run.rc == 1, (run.rc, run.stderr[-2000:])
    lines = [x for x in run.stderr.splitlines() if not re.fullmatch(r"cpsnake segment: \d+ of \d+ images failed", x)]
    assert len(lines) == 1, run.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"cpsnake {step}: error: "), line
    assert "Traceback" not in run.stderr
    for name in names:
        assert " ".join(str(name).split()) in line, (name, line)
    if pattern:
        assert re.search(pattern, line), (pattern, line)
    return line


def assert_no_outputs(*paths: Path) -> None:
    """Nothing under a final output name, and no temporary file beside it."""
    for p in paths:
        assert not p.exists(), p
        if p.parent.exists():
            assert not [q for q in p.parent.iterdir() if q.name.startswith(f".{p.name}.")], list(p.parent.iterdir())


# --- builders --------------------------------------------------------------------------------------


def tiff_bytes(
    width: int,
    height: int,
    strip: bytes,
    *,
    bits: int = 16,
    compression: int = 1,
    samples: int = 1,
    sample_format: int = 1,
) -> bytes:
    """A little-endian classic TIFF of one strip holding ``strip`` (the header may declare far more)."""
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, bits),
        (259, 3, compression),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, samples),
        (278, 4, height),
        (279, 4, len(strip)),
        (339, 3, sample_format),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    offset = 8 + ifd_size
    out = [b"II*\x00", struct.pack("<I", 8), struct.pack("<H", len(tags))]
    for tag, typ, value in tags:
        value = offset if tag == 273 else value
        packed = struct.pack("<HHI", tag, typ, 1) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
        out.append(packed)
    out.append(struct.pack("<I", 0))
    return b"".join(out) + strip


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes, *, depth: int = 16, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


BOMB_SIDE = 24000  # PNG 16-bit grey rows (1 + 2 * 24000 bytes) = TIFF 8-bit rows of 48001 pixels: 1.15 GB of zeros


@pytest.fixture(scope="module")
def zero_stream() -> bytes:
    """A zlib stream (about 1.1 MB) of 24000 * 48001 zero bytes (1.15 GB decoded), made once."""
    comp = zlib.compressobj(9)
    row = bytes(1 + 2 * BOMB_SIDE)
    block = row * 512
    parts = [comp.compress(block) for _ in range(BOMB_SIDE // 512)]
    parts.append(comp.compress(row * (BOMB_SIDE % 512)))
    parts.append(comp.flush())
    return b"".join(parts)


def write_tif(path: Path, array: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, array, **kwargs)
    return path


def small_image(d: Path, name: str = "small.tif", shape=(64, 64)) -> Path:
    rng = np.random.default_rng(0)
    return write_tif(d / name, rng.integers(100, 4000, shape).astype(np.uint16))


def normalized_image(d: Path) -> Path:
    rng = np.random.default_rng(0)
    return write_tif(d / "norm.tif", rng.random((1, 64, 64), dtype=np.float32), imagej=True, metadata={"axes": "CYX"})


def roi_zip(path: Path, rois: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in rois.items():
            zf.writestr(name, data)
    return path


def oval_roi(left: int, top: int, right: int, bottom: int) -> bytes:
    from roifile import ROI_TYPE, ImagejRoi

    roi = ImagejRoi(roitype=ROI_TYPE.OVAL, left=left, top=top, right=right, bottom=bottom, name="0001")
    return roi.tobytes()


def polygon_roi(xy, name="0001") -> bytes:
    """A freehand ROI with sub-pixel (float) coordinates, as Fiji saves one."""
    import warnings

    from roifile import ImagejRoi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # roifile casts NaN to its integer copy
        roi = ImagejRoi.frompoints(np.asarray(xy, np.float32))
    roi.name = name
    return roi.tobytes()


def tiny_state(tiny_model: Path) -> dict:
    import torch

    return {k: v.clone() for k, v in torch.load(tiny_model, weights_only=True).items()}


def save_state(state: dict, path: Path) -> Path:
    import torch

    torch.save(state, path)
    return path


def fifo(d: Path, name: str) -> Path:
    """A FIFO (named pipe) ``d/name`` with no writer: opening it for reading would block forever."""
    p = d / name
    os.mkfifo(p)
    return p


def unix_socket(d: Path, name: str) -> Path:
    """A bound UNIX socket at ``d/name``."""
    p = d / name
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    return p
