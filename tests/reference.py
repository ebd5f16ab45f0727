"""The reference implementation (cellpose 4.2.1.1), imported only inside the tests that compare with it."""

from __future__ import annotations

import pytest


def cellpose(module: str = "cellpose"):
    """The module ``module`` of cellpose 4.2.1.1, or a skip (which tests/ci_skips.py fails under CI=true).

    Call it inside a test, never at module level, so that the tests of the same file that do not need
    cellpose (bad input, pickle refusal, CLI errors) still run where cellpose is missing.
    """
    return pytest.importorskip(module, reason="cellpose==4.2.1.1 is the reference: pip install cellpose==4.2.1.1")
