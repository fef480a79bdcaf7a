"""The workflow on a real SLURM: tests/cluster/run_slurm_smoke.sh starts a one-node cluster on this machine, runs
tests/cluster/smoke.yaml through snakemake-executor-plugin-slurm (tests/cluster/profile) and, beside it, locally,
checks that every job of the DAG ran as a SLURM job and that both runs' summary.csv agree exactly, and stops what it
started.

Needs root and either Debian's SLURM packages or apt-get with a reachable mirror (the script installs slurmctld,
slurmd, slurm-client and munge, and the plugin into this interpreter's environment); skipped otherwise, with the
reason. METHODS_SKIP_SLURM=1 skips it too. It runs last in the session (tests/conftest.py). About 6 minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("run_slurm_smoke.sh")
TIMEOUT = 900  # seconds; the script takes about 360 on 2 cores
SKIPPED = 77  # the script's exit status when it cannot run here (not root, packages not installable)


def cannot_run() -> str | None:
    if os.environ.get("METHODS_SKIP_SLURM"):
        return "METHODS_SKIP_SLURM is set"
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root: installs Debian's SLURM packages and runs the SLURM daemons"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "needs SLURM installed or apt-get to install it (Debian/Ubuntu)"
    if not (shutil.which("bash") and shutil.which("timeout")):
        return "needs bash and timeout"
    return None


def tail(text: str, lines: int = 150) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.slow
def test_smoke_dag_runs_under_a_real_slurm_as_it_runs_locally():
    reason = cannot_run()
    if reason:
        pytest.skip(reason)
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script's EXIT trap stops Snakemake, the jobs and its daemons
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{SCRIPT.name} did not finish within {TIMEOUT} s:\n{tail(out)}")
    print(tail(out, 40))  # the checks and the timings (pytest -s, or -rP)
    if proc.returncode == SKIPPED:
        skips = [line for line in out.splitlines() if "SKIP:" in line]
        pytest.skip(skips[-1].split("SKIP:", 1)[1].strip() if skips else f"{SCRIPT.name} exited {SKIPPED}")
    assert proc.returncode == 0, f"{SCRIPT.name} exited {proc.returncode}:\n{tail(out)}"
