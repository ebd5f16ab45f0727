"""pytest plugin: under ``CI=true`` a skipped test is a failure.

The oracle tests (real ImageJ, real SLURM, cellpose 4.2.1.1 parity) skip on a developer's machine that
lacks those tools. In CI such a skip would make a green run that checked nothing, so there every skip
(a test's own, a fixture's, or a whole module's at collection) is turned into a failure whose message
says why the test did not run. Loaded by ``tests/conftest.py``; ``.ci/run`` sets ``CI=true``.
"""

from __future__ import annotations

import os

import pytest


def ci() -> bool:
    """True when the environment says this is a CI run (``CI=true`` or ``CI=1``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2])
    return str(longrepr)


def _fail(report, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{what} was skipped under CI=true ({_reason(report.longrepr)}); CI must run every oracle test: "
        "install what the reason names (.ci/run installs imagej, slurm-wlm and cellpose) or fix the set-up"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if ci() and report.skipped:
        _fail(report, f"collecting {collector.nodeid}")
