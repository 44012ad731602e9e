"""Faults: a kernel that dies (even by SIGKILL) or shuts down leaves nothing of its cluster behind."""

from __future__ import annotations

import os
import signal

import pytest
from jupyter_client.manager import start_new_kernel

from tests.conftest import our_processes

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
        assert any("ipyparallel.engine" in p for p in our_processes())
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
