"""Faults: a kernel that dies (even by SIGKILL) or shuts down leaves nothing of its cluster behind."""

from __future__ import annotations

import ast
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from jupyter_client.manager import start_new_kernel

import ipcmagic
from ipcmagic.base.errors import ClusterError
from ipcmagic.cluster.bounded import ParallelTimeout
from tests.conftest import engine_processes

LAUNCHERS = {  # launcher -> (where the kernel runs, extra start options)
    "local": ("outside_slurm", ""),
    "mpirun": ("outside_slurm", "--launcher-args=--oversubscribe"),
    "srun": ("in_allocation", ""),
}


@pytest.fixture
def kernel_with_cluster(request, nothing_left):
    """A real Jupyter kernel that has started a 2-engine cluster with the parametrized launcher."""
    place, options = LAUNCHERS[request.param]
    request.getfixturevalue(place)
    if request.param == "mpirun":
        request.getfixturevalue("mpirun")
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        reply = kc.execute_interactive(
            f"%load_ext ipcmagic\n%ipcluster start -n 2 --launcher {request.param} {options}", timeout=120
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        assert engine_processes()
        yield km
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
        km.cleanup_resources()


@pytest.mark.parametrize("kernel_with_cluster", list(LAUNCHERS), indirect=True)
def test_sigkilled_kernel_leaves_nothing(kernel_with_cluster):
    os.kill(kernel_with_cluster.provisioner.process.pid, signal.SIGKILL)
    kernel_with_cluster.provisioner.process.wait()
    # nothing_left then waits (bounded) and asserts: no process, no step, no directory


@pytest.mark.parametrize("kernel_with_cluster", ["srun"], indirect=True)
def test_kernel_shutdown_leaves_nothing(kernel_with_cluster):
    kernel_with_cluster.shutdown_kernel(now=False)


@pytest.mark.parametrize("place", ["outside_slurm", "in_allocation"])
def test_output_flood_blocks_nothing(ip, request, place):
    """10 MB written to an engine's OS-level stdout and stderr (the predecessor deadlocks at 32 kB)."""
    request.getfixturevalue(place)
    ip.run_line_magic("ipcluster", "start -n 2")
    tic = time.monotonic()
    ip.run_cell_magic(
        "px", "--no-stream", "import os\nfor fd in (1, 2):\n    os.write(fd, b'x' * 10_000_000)\n"
    )
    ip.run_cell_magic("px", "", "alive = 1")
    assert ipcmagic.client()[:]["alive"] == [1, 1]
    ip.run_line_magic("ipcluster", "stop")
    assert time.monotonic() - tic < 60


def test_mpirun_without_enough_slots_fails_at_once(ip, outside_slurm, mpirun):
    tic = time.monotonic()
    with pytest.raises(ClusterError, match="(?s)mpirun launcher exited.*slots"):
        ip.run_line_magic("ipcluster", f"start -n {os.cpu_count() + 1} --launcher mpirun")
    assert time.monotonic() - tic < 5


def test_mpi_singletons_fail_the_start(ip, in_allocation, mpich_libmpi, monkeypatch):
    """MPICH under srun --mpi=none runs N worlds of size 1 without a word; the start must say so."""
    monkeypatch.setenv("MPI4PY_LIBMPI", mpich_libmpi)  # srun passes it on to the engines
    with pytest.raises(
        ClusterError, match=r"not one MPI world: they see COMM_WORLD sizes \[1\], not 2.*pmi2"
    ):
        ip.run_line_magic("ipcluster", "start -n 2 --mpi none")
    assert not ipcmagic._magics.cluster.running
    ip.run_line_magic("ipcluster", "start -n 2 --mpi pmi2")  # the advice works
    assert ipcmagic.client()[:].apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_size()) == [
        2,
        2,
    ]
    ip.run_line_magic("ipcluster", "stop")


def test_connection_files_are_private_and_signed(ip, outside_slurm):
    import ipyparallel as ipp

    ip.run_line_magic("ipcluster", "start -n 1")
    rc = ipcmagic.client()
    security = Path(rc.cluster.profile_dir) / "security"
    assert stat.S_IMODE(Path(rc.cluster.profile_dir).stat().st_mode) == 0o700
    files = list(security.glob("ipcontroller-*.json"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    info = json.loads((security / f"ipcontroller-{rc.cluster.cluster_id}-client.json").read_text())
    assert info["interface"] == "tcp://127.0.0.1", "one node: the controller listens on loopback only"
    assert len(info["key"]) >= 32 and info["signature_scheme"].startswith("hmac-")
    genuine = ipp.Client(str(security / f"ipcontroller-{rc.cluster.cluster_id}-client.json"), timeout=10)
    assert genuine.ids == [0]  # the same file with the right key connects
    genuine.close()
    forged = security / "forged.json"
    forged.write_text(json.dumps({**info, "key": "0" * len(info["key"])}))
    with pytest.raises(ipp.TimeoutError):  # unsigned requests are dropped: no connection, no code run
        ipp.Client(str(forged), timeout=3)
    assert rc[:].apply_sync(lambda: 1) == [1]
    ip.run_line_magic("ipcluster", "stop")


def test_two_kernels_starting_together_are_isolated(nothing_left, outside_slurm):
    kernels = [start_new_kernel(kernel_name="python3") for _ in range(2)]
    try:
        for _, kc in kernels:  # both start at once
            kc.execute(
                "%load_ext ipcmagic\n%ipcluster start -n 2\nimport ipcmagic\n%px import os; pid = os.getpid()"
            )
        pids = []
        for _, kc in kernels:
            reply = kc.execute_interactive("rc = ipcmagic.client(); assert rc.ids == [0, 1]", timeout=120)
            assert reply["content"]["status"] == "ok", reply["content"]
            pids.append(user_expression(kc, "sorted(rc[:]['pid'])"))
        assert not set(pids[0]) & set(pids[1]), "each kernel sees only its own engines"
        first, second = (kc for _, kc in kernels)
        assert first.execute_interactive("%ipcluster stop", timeout=60)["content"]["status"] == "ok"
        assert user_expression(second, "rc[:].apply_sync(lambda: 1)") == [1, 1]
        assert second.execute_interactive("%ipcluster stop", timeout=60)["content"]["status"] == "ok"
    finally:
        for km, kc in kernels:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def user_expression(kc, expression: str):
    reply = kc.execute_interactive("", user_expressions={"x": expression}, timeout=60)
    return ast.literal_eval(reply["content"]["user_expressions"]["x"]["data"]["text/plain"])


def test_controller_death(ip, in_allocation, capsys):
    ip.run_line_magic("ipcluster", "start -n 2")
    cluster = ipcmagic.client().cluster
    os.kill(cluster.controller.process.pid, signal.SIGKILL)
    capsys.readouterr()
    ip.run_line_magic("ipcluster", "status")
    assert "The controller has died" in capsys.readouterr().out
    deadline = time.monotonic() + 30  # engines miss the controller's pings for 10 s and exit
    while engine_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_processes()
    with pytest.raises(UsageError, match="controller has died"):
        ip.run_line_magic("ipcluster", "restart")
    ip.run_line_magic("ipcluster", "stop")
    ip.run_line_magic("ipcluster", "start -n 2")
    assert ipcmagic.client().ids == [0, 1]
    ip.run_line_magic("ipcluster", "stop")


def test_restart_without_cluster(ip):
    with pytest.raises(UsageError, match="No cluster is running"):
        ip.run_line_magic("ipcluster", "restart")


def test_pxtimeout_restarts_ranks_stuck_in_mpi(ip, in_allocation):
    """Ranks deadlocked in MPI (rank 0 waits for a message nobody sends) wait forever; not past
    the timeout."""
    ip.run_line_magic("ipcluster", "start -n 3")
    rc = ipcmagic.client()
    cell = (
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.rank == 0:\n"
        "    MPI.COMM_WORLD.recv(source=1)\n"
        "MPI.COMM_WORLD.Barrier()"
    )
    tic = time.monotonic()
    with pytest.raises(ParallelTimeout, match="did not stop on SIGINT.*all 3 engines are being restarted"):
        ip.run_cell_magic("pxtimeout", "3", cell)
    assert time.monotonic() - tic < 30
    world = rc[:].apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.allreduce(1))
    assert rc.ids == [0, 1, 2], "the same client sees a full cluster again"
    assert world == [3, 3, 3], "one consistent MPI world"
    ip.run_line_magic("ipcluster", "stop")


def test_pxtimeout_interrupts_python_and_keeps_the_engines(ip, in_allocation, capsys):
    ip.run_line_magic("ipcluster", "start -n 2")
    rc = ipcmagic.client()
    ip.run_cell_magic("pxtimeout", "10", "x = 1\nprint('quick', x)")
    assert "quick 1" in capsys.readouterr().out
    pids = rc[:].apply_sync(os.getpid)
    with pytest.raises(ParallelTimeout, match="interrupted .KeyboardInterrupt. and keep their variables"):
        ip.run_cell_magic("pxtimeout", "2", "import time\ntime.sleep(60)")
    assert rc[:]["x"] == [1, 1] and rc[:].apply_sync(os.getpid) == pids
    with pytest.raises(UsageError, match="argument seconds"):
        ip.run_cell_magic("pxtimeout", "0", "pass")
    ip.run_line_magic("ipcluster", "stop")


def interrupt_after(seconds: float) -> threading.Timer:
    """SIGINT to this process (the kernel's interrupt button) after ``seconds``."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("action", ["start", "restart"])
def test_an_interrupted_start_or_restart_says_what_it_stopped(ip, outside_slurm, action):
    """Both ended in a KeyboardInterrupt without a word."""
    if action == "restart":
        ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
    interrupt_after(0.3)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        ip.run_line_magic("ipcluster", f"{action} -n 16 --launcher local" if action == "start" else action)
    assert interrupted.value._render_traceback_() == [
        {
            "start": "KeyboardInterrupt: %ipcluster start interrupted; everything started was stopped.",
            "restart": "KeyboardInterrupt: %ipcluster restart interrupted; the cluster was stopped "
            "(%ipcluster start starts a new one).",
        }[action]
    ]
    assert not ipcmagic._magics.cluster.running


def test_timeout_bounds_the_whole_start(ip, outside_slurm):
    """16 local engines on 2 cores take about 3 s to start: --timeout 1 used to let them."""
    tic = time.monotonic()
    with pytest.raises(ClusterError, match=r"within 1 s"):
        ip.run_line_magic("ipcluster", "start -n 16 --launcher local --timeout 1")
    assert time.monotonic() - tic < 10  # the start, then stopping what it started


def test_local_engines_are_bounded_by_the_kernels_cpus(ip, outside_slurm):
    most = 32 * len(os.sched_getaffinity(0))
    with pytest.raises(
        UsageError, match=rf"-n 4000 local engines is more than 32 per CPU .*use -n {most} or"
    ):
        ip.run_line_magic("ipcluster", "start -n 4000 --launcher local")
