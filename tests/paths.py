"""Where the tests find the repository and their data, whatever folder a test file sits in."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROOT", "TESTS", "DATA"]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"
