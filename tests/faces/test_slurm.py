"""The workflow through a real single-node SLURM (Debian's slurm-wlm) gives the local run's outputs.

The fixture writes /etc/slurm/slurm.conf (one node on 127.0.0.1 with 2 CPUs, no accounting; an
existing file is put back afterwards), starts munged, slurmctld and slurmd as root with their state and
logs in a temporary folder, and stops them at the end. Three small synthetic images (test_workflow's
run folder) in two batches, with a seeded random ``tiny`` model (not the demo and not the bundled
model: each dependent job level costs seconds of status polling), go through
``--workflow-profile workflow/profiles/slurm`` (its ``squeue`` status command works without slurmdbd)
with the GPU request of ``infer`` set to 0, as this machine has none. Evidence that every job went
through SLURM, one per batch and rule: the plugin's per-job logs (kept with --slurm-keep-successful-logs)
name a SLURM job id, and slurmctld's log shows each of those ids submitted and completed.

Skips (with the reason) only when SLURM is not installed and cannot be installed, or does not start;
under CI=true such a skip is a failure (tests/ci_skips.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import ROOT
from workflow_run import comparable, make_run_dir, outputs_of, run_env

CONF = Path("/etc/slurm/slurm.conf")
NAMES = ("blobs_a", "blobs_b", "blobs_c")  # three images in two batches (batch images: 2)
BATCH_RULES = ("normalize", "infer", "reconstruct", "rois", "measure", "overlay")
BATCHES = 2

pytestmark = pytest.mark.slurm


def _have_slurm() -> bool:
    return all(shutil.which(t) for t in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol"))


def _install_slurm() -> str | None:
    """apt-get install slurm-wlm and munge; None on success, else why not."""
    if os.geteuid() != 0:
        return "not root, cannot install slurm-wlm"
    if not shutil.which("apt-get"):
        return "no apt-get to install slurm-wlm"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return None if proc.returncode == 0 and _have_slurm() else f"apt-get install slurm-wlm failed: {proc.stderr[-300:]}"


def _slurm_conf(state: Path) -> str:
    mem_mb = int(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 * 0.5)
    return f"""\
ClusterName=cpsnake-test
SlurmctldHost=localhost(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# finished jobs stay visible to squeue for 10 minutes (the plugin's squeue status command needs them)
MinJobAge=600
ReturnToService=2
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
SlurmctldDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _node_idle() -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    return proc.returncode == 0 and proc.stdout.strip() == "idle"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root to start munged, slurmctld and slurmd")
    if not _have_slurm():
        why = _install_slurm()
        if why:
            pytest.skip(why)
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        pytest.skip("a slurmctld is already running on this machine; not touching it")
    state = tmp_path_factory.mktemp("slurm")
    for sub in ("ctld", "d"):
        (state / sub).mkdir()
    CONF.parent.mkdir(parents=True, exist_ok=True)
    backup = CONF.read_bytes() if CONF.exists() else None
    CONF.write_text(_slurm_conf(state))
    munged = None
    started = []
    try:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
                Path(d).mkdir(parents=True, exist_ok=True)
            subprocess.run(["munged", "--force"], check=True, capture_output=True, timeout=30)
            munged = int(Path("/run/munge/munged.pid").read_text())
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run([daemon], capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                pytest.skip(f"{daemon} did not start: {proc.stderr.strip()[-300:]}")
            started.append(daemon)
        deadline = time.monotonic() + 30
        while not _node_idle():
            if time.monotonic() > deadline:
                log = (state / "slurmctld.log").read_text()[-500:] if (state / "slurmctld.log").exists() else ""
                pytest.skip(f"the SLURM node did not become idle within 30 s; slurmctld.log: {log}")
            time.sleep(0.5)
        yield state
    finally:
        if started:
            subprocess.run(["scontrol", "shutdown"], capture_output=True, timeout=30)
            for pidfile in ("slurmctld.pid", "slurmd.pid"):
                _wait_gone(state / pidfile)
        if munged:
            try:
                os.kill(munged, 15)
            except ProcessLookupError:
                pass
        if backup is None:
            CONF.unlink(missing_ok=True)
        else:
            CONF.write_bytes(backup)


def _wait_gone(pidfile: Path, timeout: float = 15.0) -> None:
    """Wait until the daemon of ``pidfile`` has exited (SIGKILL after ``timeout``)."""
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _run_dir(root: Path, model: Path) -> Path:
    return make_run_dir(root, model, batch={"images": 2})


def _snakemake(workdir: Path, profile: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / profile),
        *extra,
    ]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake ({profile}) failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def test_slurm_run_goes_through_slurm_and_equals_the_local_run(slurm_cluster, tiny_model, tmp_path):
    local = _run_dir(tmp_path / "local", tiny_model)
    _snakemake(local, "local", "--cores", "2")

    cluster = _run_dir(tmp_path / "cluster", tiny_model)
    _snakemake(
        cluster,
        "slurm",
        "--jobs",
        "4",
        "--set-resources",
        "infer:gpu=0",  # this machine has no GPU
        "--slurm-keep-successful-logs",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "10",
    )

    # one SLURM job per batch and rule, never per image: a plugin log per job, each naming a job id
    # slurmctld ran (the last job, `check`, is a local rule)
    logs = sorted((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    by_rule: dict[str, list[str]] = {}
    for log in logs:
        rule = log.relative_to(cluster / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(log.stem)
    for rule in BATCH_RULES:
        assert len(by_rule.get(rule, [])) == BATCHES, (rule, by_rule)
    for rule in ("samples", "aggregate", "provenance"):
        assert len(by_rule.get(rule, [])) == 1, (rule, by_rule)
    ctld = (slurm_cluster / "slurmctld.log").read_text()
    job_ids = [re.match(r"\d+", stem).group(0) for stems in by_rule.values() for stem in stems]
    assert len(set(job_ids)) == len(job_ids) == len(BATCH_RULES) * BATCHES + 3
    for job_id in job_ids:
        assert re.search(rf"JobId={job_id}\b.*(?:WEXITSTATUS 0|done)", ctld), (
            f"job {job_id} not completed in slurmctld.log"
        )

    # same outputs as the local run
    for path in outputs_of(cluster, NAMES):
        assert path.is_file(), path
        assert comparable(path) == comparable(local / path.relative_to(cluster)), path
