"""The test suite's own rules: under CI=true a skip fails (tests/ci_skips.py), and tests that do not need
cellpose still run where cellpose is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from paths import TESTS

HERE = TESTS

SKIPPING = textwrap.dedent(
    """
    import pytest

    def test_passes():
        assert True

    def test_skips():
        pytest.skip("ImageJ not installed")
    """
)


@pytest.mark.parametrize("ci, outcome", [("true", dict(passed=1, failed=1)), ("", dict(passed=1, skipped=1))])
def test_a_skip_fails_only_under_ci(pytester, monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_x=SKIPPING)
    result = pytester.runpytest_subprocess("-p", "ci_skips", f"--rootdir={pytester.path}", "-o", f"pythonpath={HERE}")
    result.assert_outcomes(**outcome)
    if ci:
        result.stdout.fnmatch_lines(["*skipped under CI=true (Skipped: ImageJ not installed)*"])


def test_a_module_level_skip_fails_under_ci(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_y="import pytest\npytest.importorskip('no_such_module_xyz')\n\ndef test_a():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "ci_skips", "-o", f"pythonpath={HERE}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*collecting test_y.py was skipped under CI=true*"])


def test_tests_that_need_no_cellpose_run_without_it(tmp_path):
    """With cellpose unimportable, the bad-input and pickle tests of the parity files pass; only the
    comparisons with cellpose skip (no module-level importorskip over mixed tests)."""
    blocker = tmp_path / "block"
    (blocker / "cellpose").mkdir(parents=True)
    (blocker / "cellpose" / "__init__.py").write_text(
        "raise ModuleNotFoundError('cellpose hidden for this test', name='cellpose')\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
        "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
        "CI": "",
    }
    files = ["models/test_model.py", "engine/test_dynamics.py", "engine/test_reconstruct.py"]
    keep = "pickle or truncated or missing or wrong_shape or unit_length or empty or background or cli or niter"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            "-k",
            keep,
            *[str(HERE / f) for f in files],
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
        timeout=600,
    )
    tail = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "skipped" not in tail and " passed" in tail, tail
    assert int(tail.split(" passed")[0].split()[-1]) >= 10, tail
