"""Shared by the benchmark scripts: timing over several runs, the spread, and the machine's load.

Figures measured on a shared machine move with its load, so every script times each side several times
(alternating the sides, so background load hits both alike) and prints the median with the range, and
the load average at the start and the end.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def load() -> str:
    """The 1-minute load average and the CPU count, e.g. ``load 1.9 on 2 cpus``."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """``median (min-max, n runs)``, e.g. ``3.52 s (3.41-3.90, 3 runs)``; one value prints alone."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f} {unit} (1 run)"
    return (
        f"{statistics.median(values):.{digits}f} {unit} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f}, {len(values)} runs)"
    )


def ratio(num: list[float], den: list[float]) -> str:
    """Ratio of medians, with the range of the per-run ratios (runs paired in order)."""
    med = statistics.median(num) / statistics.median(den)
    pairs = [a / b for a, b in zip(num, den)]
    if len(pairs) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x (per run {min(pairs):.2f}-{max(pairs):.2f}x)"
