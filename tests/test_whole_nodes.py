"""Whole-node sessions, as CSCS's spawner starts JupyterLab: the kernel runs in the batch script of a
``--nodes`` job (no job step, no task count) on whole GH200-shaped nodes of the labs (4 stand-in GPUs
each, Slurm GRES; 16 CPUs on the 1-node lab, 8 on each of the 2-node lab's). What ``%ipcluster start``
and ``%%torchrun`` start without -n, and with -n gpu, and where each engine or rank runs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import MAGICS_KERNEL, ROOT, batch_job, tagged

pytestmark = pytest.mark.usefixtures("nothing_left")

#: where a process runs: RANK, LOCAL_RANK, CUDA_VISIBLE_DEVICES, SLURM_CPUS_PER_TASK, host
WHERE = """
def where():
    import os, socket
    names = ("RANK", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES", "SLURM_CPUS_PER_TASK")
    return [os.environ.get(name) for name in names] + [socket.gethostname()]
"""


def run_in_batch(env: dict[str, str], options: list[str], *lines: str, on_node: bool = False) -> str:
    """Run KERNEL with ``lines`` in a new job as its batch script runs (no step, the test's whole
    environment, as firecrestspawner's ``--export=ALL,...``); its output. ``on_node``: as the
    batch script itself, on the job's first node (sbatch, whose files lie under /var/tmp, which
    the 2-node lab's nodes see); else in salloc's shell on this host (the 1-node lab's node),
    which is quicker than sbatch's polling."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="whole-nodes-") as tmp:
        os.chmod(tmp, 0o755)
        script = os.path.join(tmp, "kernel.py")
        with open(script, "w") as f:
            f.write(WHERE + MAGICS_KERNEL)
        kernel = [sys.executable, script, *lines]
        if on_node:
            batch = os.path.join(tmp, "job.sh")
            with open(batch, "w") as f:
                f.write(f"#!/bin/sh\ncd {ROOT}\nexec {shlex.join(kernel)}\n")
            return batch_job(["-J", "ipcmagic-whole", *options], batch, env, ROOT)
        salloc = ["salloc", "-Q", "-J", "ipcmagic-whole", *options, *kernel]
        done = subprocess.run(salloc, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture
def one_node(slurm) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def test_a_gpu_node_gets_an_engine_and_a_rank_per_gpu(one_node):
    """The 1-node lab, its 4 GPUs and 8 of its CPUs (a whole node is not to be had while other tests
    hold some): 4 engines, each with its own GPU and a quarter of the job's CPUs; %%torchrun -n
    gpu: 4 ranks that see every GPU, each LOCAL_RANK one of them; --gpus-per-rank 1: each sees
    its own only."""
    out = run_in_batch(
        one_node,
        ["--nodes=1", "--gres=gpu:4", "--mincpus=8"],
        "%ipcluster start",
        "%ipcluster stop",
        "%%torchrun -n gpu",
        "%%torchrun --gpus-per-rank 1",
        'launch(nproc="gpu", gpus_per_rank=1, srun_args="--cpus-per-task=1")',
    )
    assert "4 srun engines ready in " in out and " s (one per GPU of this job); %%px runs" in out, out
    (engines,) = tagged(out, "ENGINES")
    assert sorted(engine[2] for engine in engines) == ["0", "1", "2", "3"]
    assert {engine[3] for engine in engines} == {"2"}
    places = tagged(out, "PLACE")
    all_seen, own = sorted(places[:4]), sorted(places[4:])  # each run's ranks, by rank
    assert [place[1:4] for place in all_seen] == [[str(r), "0,1,2,3", "2"] for r in range(4)], out
    assert [place[1:4] for place in own] == [[str(r), str(r), "2"] for r in range(4)], out
    assert out.count("%%torchrun: 4 ranks (one per GPU of this job's node)") == 3, out
    (launched,) = tagged(out, "LAUNCHED")  # launch() takes %%torchrun's options; the user's srun's win
    assert [place[1:4] for place in launched] == [[str(r), str(r), "1"] for r in range(4)], out


def test_a_node_without_gpus_gets_an_engine_per_cpu_share(one_node):
    """Without GPUs (8 CPUs of a node): one engine per CPU of the job, or per -c CPUs; %%torchrun: 1 rank."""
    out = run_in_batch(
        one_node, ["--nodes=1", "--mincpus=8"], "%ipcluster start -c 4", "%ipcluster stop", "%%torchrun"
    )
    assert "2 srun engines ready in " in out and "(one per 4 CPUs of this job)" in out, out
    assert [place[:3] for place in tagged(out, "PLACE")] == [["0", "0", None]], out
    assert "ranks (one per" not in out and "%%torchrun: peak memory by rank: RSS " in out, out


def test_two_gpu_nodes(two_nodes):
    """The 2-node lab: 8 engines, 4 per node, each on its own GPU with 2 of its node's 8 CPUs;
    %%torchrun --nnodes 2: 8 ranks, 4 per node."""
    out = run_in_batch(
        two_nodes,
        ["--nodes=2", "--exclusive"],
        "%ipcluster start",
        "%ipcluster stop",
        "%%torchrun --nnodes 2",
        on_node=True,
    )
    assert "8 srun engines ready in " in out and "(one per GPU of this job)" in out, out
    (engines,) = tagged(out, "ENGINES")
    assert sorted(engine[2:] for engine in engines) == sorted(
        [str(g), "2", host] for host in ("n1", "n2") for g in range(4)
    )
    ranks = sorted(tagged(out, "PLACE"), key=lambda place: int(place[0]))
    assert [(p[0], p[1], p[4]) for p in ranks] == [
        (str(r), str(r % 4), "n1" if r < 4 else "n2") for r in range(8)
    ], out
    assert {(p[2], p[3]) for p in ranks} == {
        (None, "2")
    } and "%%torchrun: 8 ranks (one per GPU of each node)" in out
