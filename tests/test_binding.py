"""Engines bound to CPUs and GPUs: srun on the 2-node lab (task/affinity, GRES GPUs), Open MPI's
mpirun and local engines on this machine."""

from __future__ import annotations

import json
import os

import pytest

import ipcmagic
from ipcmagic.base.errors import ClusterError
from tests.conftest import run_in_job

KERNEL = """
import json, ipcmagic
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start -n 4 --gpus-per-engine 1 --cpu-bind cores")
print(json.dumps(ipcmagic._magics.cluster.status().rows))
ip.run_line_magic("ipcluster", "stop")
"""


def affinity(rc) -> list[list[int]]:
    return rc[:].apply_sync(lambda: sorted(__import__("os").sched_getaffinity(0)))


def test_srun_gives_each_engine_its_gpu_and_core_on_every_node(two_nodes, nothing_left):
    """A kernel in a job step of a 2-node allocation with 2 GPUs per node (Slurm GRES)."""
    out = run_in_job(
        ["-N", "2", "--ntasks-per-node=2", "--gpus-per-node=2", "-J", "ipcmagic-gpus"],
        ["-N", "1", "-n", "1"],
        KERNEL,
        two_nodes,
    )
    rows = json.loads(out.splitlines()[-2])
    placed = [(row["rank"], row["host"], row["gpus"], row["cpus"]) for row in rows]
    assert placed == [(0, "n1", "0", "0"), (1, "n1", "1", "1"), (2, "n2", "0", "0"), (3, "n2", "1", "1")]


def test_mpirun_binds_each_engine_to_its_cores(ip, outside_slurm, mpirun):
    ip.run_line_magic("ipcluster", "start -n 1 --launcher mpirun")
    assert affinity(ipcmagic.client()) == [[0]], "Open MPI binds 1 or 2 ranks to one core each"
    ip.run_line_magic("ipcluster", "stop")
    ip.run_line_magic("ipcluster", "start -n 1 --launcher mpirun -c 2")
    assert affinity(ipcmagic.client()) == [[0, 1]]
    ip.run_line_magic("ipcluster", "stop")


@pytest.mark.parametrize("launcher", ["mpirun", "local"])
def test_gpus_by_place_on_the_host(ip, outside_slurm, mpirun, monkeypatch, launcher):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")  # what the site gave this kernel
    ip.run_line_magic("ipcluster", f"start -n 2 --launcher {launcher} --gpus-per-engine 2")
    rc = ipcmagic.client()
    seen = rc[:].apply_sync(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["2,3", "5,7"]
    assert [row["gpus"] for row in ipcmagic._magics.cluster.status().rows] == seen
    ip.run_line_magic("ipcluster", "restart")
    assert rc[:].apply_sync(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"]) == seen
    ip.run_line_magic("ipcluster", "stop")


def test_too_few_gpus_fail_the_start_and_stop_everything(ip, outside_slurm, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(ClusterError, match=r"need 4 GPUs, but CUDA_VISIBLE_DEVICES there lists 3 \(0,1,2\)"):
        ip.run_line_magic("ipcluster", "start -n 2 --launcher local --gpus-per-engine 2")
    assert not ipcmagic._magics.cluster.running and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2"
