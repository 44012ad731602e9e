"""Fixtures for tests against the real Slurm test cluster (dev/slurmlab), MPI and IPython.

Under CI=true a missing Slurm or MPI fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell

CI = os.environ.get("CI") == "true"
ROOT = Path(__file__).resolve().parent.parent
ALLOCATION_TASKS = 8
OUR_PROCESS = re.compile(
    r"ipyparallel\.(engine|controller)|ipengine|ipcontroller|--job-name=ipcmagic-|torch\.distributed\.run|torchrun-task"
)


def require(ok: bool, why: str) -> None:
    """Skip a test whose environment is missing, except in CI where that is a failure."""
    if not ok:
        if CI:
            pytest.fail(f"CI must not skip: {why}")
        pytest.skip(why)


def our_processes() -> list[str]:
    """Running controller, engine and engine-step processes (zombies excluded)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and OUR_PROCESS.search(cmdline):
            found.append(f"{proc.info['pid']} {cmdline}")
    return found


def our_steps() -> list[str]:
    """Slurm job steps started by ipcmagic."""
    if not shutil.which("squeue"):
        return []
    out = subprocess.run(
        ["squeue", "--steps", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30
    ).stdout
    return [line for line in out.splitlines() if "ipcmagic-" in line]


def our_temp_dirs() -> list[str]:
    return [str(p) for p in Path(tempfile.gettempdir()).glob("ipcmagic-*")]


def leftovers(timeout: float = 10.0) -> dict[str, list[str]]:
    """What is still there after a bounded wait for Slurm to finish tearing steps down."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() > deadline  # checked first, so the last look is never stale
        left = {"processes": our_processes(), "steps": our_steps(), "temp dirs": our_temp_dirs()}
        if not any(left.values()) or expired:
            return {k: v for k, v in left.items() if v}
        time.sleep(0.2)


@pytest.fixture
def nothing_left():
    """Assert that a test leaves no controller, engine, srun step or temp directory behind."""
    before = leftovers(timeout=0)
    assert not before, f"left over by an earlier test: {before}"
    yield
    left = leftovers()
    assert not left, f"left behind: {left}"


@pytest.fixture(scope="session")
def slurm() -> None:
    ok = bool(os.environ.get("SLURM_CONF")) and shutil.which("salloc") is not None
    require(
        ok and subprocess.run(["sinfo"], capture_output=True).returncode == 0,
        "no Slurm test cluster (dev/slurmlab start, then source its env.sh)",
    )


@pytest.fixture(scope="session")
def allocation(slurm) -> dict[str, str]:
    """A real allocation; yields the environment a kernel running in a job step of it has."""
    out = subprocess.run(
        ["salloc", "--no-shell", "-n", str(ALLOCATION_TASKS), "-J", "ipcmagic-tests"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"(\d+)", out.stdout + out.stderr)
    assert out.returncode == 0 and match, out.stderr
    job_id = match[1]
    try:
        env = subprocess.run(
            ["srun", f"--jobid={job_id}", "--overlap", "-n", "1", "env", "-0"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        yield dict(item.split("=", 1) for item in env.split("\0") if item.startswith("SLURM_"))
    finally:
        subprocess.run(["scancel", job_id])


def _drop_slurm_env(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("SLURM_") and name != "SLURM_CONF":
            monkeypatch.delenv(name)


@pytest.fixture
def in_allocation(allocation, monkeypatch) -> dict[str, str]:
    """This test process looks like a kernel in a job step of the test allocation."""
    _drop_slurm_env(monkeypatch)
    for name, value in allocation.items():
        monkeypatch.setenv(name, value)
    return allocation


@pytest.fixture
def outside_slurm(monkeypatch) -> None:
    _drop_slurm_env(monkeypatch)


@pytest.fixture
def mpirun() -> None:
    require(shutil.which("mpirun") is not None, "mpirun not installed (openmpi-bin)")
    require(
        os.geteuid() != 0 or os.environ.get("OMPI_ALLOW_RUN_AS_ROOT") == "1",
        "Open MPI as root needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
    )


@pytest.fixture
def ip(nothing_left):
    """An IPython shell with ipcmagic loaded; its cluster is stopped afterwards."""
    import ipcmagic

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipcmagic")
    yield shell
    ipcmagic._magics.cluster.stop()


@pytest.fixture
def torch_installed() -> None:
    import importlib.util

    require(importlib.util.find_spec("torch") is not None, "torch not installed (pip install torch==2.13.0)")
