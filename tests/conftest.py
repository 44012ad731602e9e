"""Fixtures for tests against the real Slurm test cluster (dev/slurmlab), MPI and IPython.

Under CI=true a missing Slurm or MPI fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell

CI = os.environ.get("CI") == "true"
# the development machines set it; a kernel that JupyterHub starts does not (it hid that torchrun's
# output waited in a pipe's buffer until the run ended)
os.environ.pop("PYTHONUNBUFFERED", None)
ROOT = Path(__file__).resolve().parent.parent
ALLOCATION_TASKS = 8
#: the 2-node lab (SLURMLAB_NODES=2 dev/slurmlab start): nodes n1, n2 with private /tmp each
TWO_NODE_LAB = Path(os.environ.get("SLURMLAB_2N", "/var/tmp/slurmlab-ipcmagic-2n"))
#: engines (ipcmagic.engine, the nanny forked from each too, or ipyparallel's)
ENGINE = re.compile(r"(ipcmagic|ipyparallel)\.engine|ipengine")
OUR_PROCESS = re.compile(
    rf"{ENGINE.pattern}|(ipcmagic|ipyparallel)\.controller|ipcontroller|--job-name=ipcmagic-|torch\.distributed\.run|torchrun-task"
)


def require(ok: bool, why: str) -> None:
    """Skip a test whose environment is missing, except in CI where that is a failure."""
    if not ok:
        if CI:
            pytest.fail(f"CI must not skip: {why}")
        pytest.skip(why)


def our_processes() -> list[str]:
    """Running controller, engine and engine-step processes, and any process of a %%torchrun run
    (its ranks' own children too: they carry the run's marker), zombies excluded."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status", "environ"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        marked = "IPCMAGIC_TORCHRUN" in (proc.info["environ"] or {})
        if proc.info["status"] != psutil.STATUS_ZOMBIE and (marked or OUR_PROCESS.search(cmdline)):
            found.append(f"{proc.info['pid']} {cmdline}")
    return found


def engine_processes() -> list[str]:
    return [p for p in our_processes() if ENGINE.search(p)]


def two_node_lab_up() -> bool:
    try:
        pid = int((TWO_NODE_LAB / "run" / "slurmctld.pid").read_text())
        return psutil.Process(pid).name() == "slurmctld"
    except (OSError, ValueError, psutil.Error):
        return False


def slurm_confs() -> list[str]:
    """The test clusters that are up: the single-node lab's, and the 2-node lab's if it runs."""
    confs = [os.environ["SLURM_CONF"]] if os.environ.get("SLURM_CONF") else []
    if two_node_lab_up():
        confs.append(str(TWO_NODE_LAB / "etc" / "slurm.conf"))
    return confs


def our_steps() -> list[str]:
    """Slurm job steps started by ipcmagic, on every test cluster."""
    if not shutil.which("squeue"):
        return []
    found = []
    for conf in slurm_confs():
        out = subprocess.run(
            ["squeue", "--steps", "-h", "-o", "%i %j"],
            env={**os.environ, "SLURM_CONF": conf},
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        found += [line for line in out.splitlines() if "ipcmagic-" in line]
    return found


def our_temp_dirs() -> list[str]:
    """ipcmagic's directories in this machine's /tmp and in the 2-node lab's node-local ones."""
    tmps = [Path(tempfile.gettempdir()), *TWO_NODE_LAB.glob("nodetmp/*")]
    return [str(p) for tmp in tmps for p in tmp.glob("ipcmagic-*")]


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


def run_in_job(salloc: list[str], srun: list[str], script: str, env: dict[str, str], *args: str) -> str:
    """Run a Python script (with ``args``) as a job step of a new allocation, as JupyterHub runs a
    kernel; its output."""
    out = subprocess.run(
        ["salloc", "-Q", *salloc, "srun", *srun, sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def batch_job(options: list[str], script: str, env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run ``script`` with ``args`` as the batch script of a new job; its output, or the test fails
    where the job failed. As ``sbatch --wait``, whose polls 2, 4 and 8 s apart cost a short job 10 s."""
    fd, out = tempfile.mkstemp(dir="/var/tmp", prefix="batch-", suffix=".out")
    os.close(fd)
    try:
        sbatch = ["sbatch", "--parsable", "-Q", "-o", out, *options, script, *args]
        submitted = subprocess.run(sbatch, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        job, deadline = submitted.stdout.strip().split(";")[0], time.monotonic() + 240
        while True:
            show = ["scontrol", "-o", "show", "job", job]
            shown = subprocess.run(show, env=env, capture_output=True, text=True, timeout=30).stdout
            if not re.search(r"JobState=(PENDING|CONFIGURING|RUNNING) ", shown):
                break
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job], env=env, timeout=30)
                raise AssertionError(f"job {job} still ran after 240 s: {Path(out).read_text()}")
            time.sleep(0.2)
        text = Path(out).read_text()
        assert "ExitCode=0:0" in shown, text + shown
        return text
    finally:
        os.unlink(out)


#: a kernel's program after a function ``where()`` (where a process runs, as JSON): ``where()`` of
#: the kernel, then each argument a magic's line (``%%...``: with a cell that prints its ``where()``;
#: ``launch(...)``: ``ipcmagic.torchrun.launch(where, ...)``), and after ``%ipcluster start`` each
#: engine's ``where()``; UsageErrors said, not raised
MAGICS_KERNEL = r"""
import inspect, json, sys
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
import ipcmagic
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
print("KERNEL", json.dumps(where()))
CELL = inspect.getsource(where) + "import json\nprint('PLACE', json.dumps(where()))"
for line in sys.argv[1:]:
    try:
        if line.startswith("launch"):
            print("LAUNCHED", json.dumps(eval(f"ipcmagic.torchrun.{line.replace('(', '(where, ', 1)}")))
        elif line.startswith("%%"):
            magic, _, args = line[2:].partition(" ")
            ip.run_cell_magic(magic, args, CELL)
        else:
            ip.run_line_magic(*line[1:].split(" ", 1))
            if line.startswith("%ipcluster start"):
                print("ENGINES", json.dumps(ipcmagic.client()[:].apply_sync(where)))
    except UsageError as e:
        print("RAISED UsageError", e)
"""


def tagged(out: str, tag: str) -> list:
    """What the lines of a MAGICS_KERNEL that say ``tag`` (after a rank's ``[N] ``) carry, in order."""
    found = (re.match(rf"(?:\[\d+\] )?{tag} (.*)", line) for line in out.splitlines())
    return [json.loads(match[1]) for match in found if match]


@pytest.fixture(scope="session")
def two_nodes() -> dict[str, str]:
    """The environment for salloc/srun on the 2-node lab."""
    require(
        two_node_lab_up(), f"no 2-node test cluster ({TWO_NODE_LAB}; SLURMLAB_NODES=2 dev/slurmlab start)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "SLURM_CONF": str(TWO_NODE_LAB / "etc" / "slurm.conf")}


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


MPICH_LIBMPI = ROOT / ".venv" / "opt" / "mpich" / "lib" / "libmpi.so.12"  # also for tox's venvs


@pytest.fixture
def mpich_libmpi() -> str:
    """The PyPI mpich wheel's libmpi (dev/setup installs it beside .venv), for mpi4py to load."""
    require(
        MPICH_LIBMPI.exists(), f"no {MPICH_LIBMPI} (pip install --prefix {MPICH_LIBMPI.parents[1]} mpich)"
    )
    return str(MPICH_LIBMPI)


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


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items) -> None:
    """A test that needs torch_installed is marked torch, which tox's py312 and py313 deselect (no torch
    for them here): it is never collected there, rather than skipped, or failed under CI=true."""
    for item in items:
        if "torch_installed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)
