"""Distributed PyTorch that stays up between cells (issue 35): ``%ipcluster start --torch`` makes the
engines one torch.distributed world; ``%%px`` cells run collectives on state kept between cells; a
rank's exception fails the cell at once and the world is formed anew; a lost node is named."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import threading
import time

import pytest
from ipyparallel.error import RemoteError
from IPython.core.error import UsageError

import ipcmagic
from ipcmagic.cluster.halting import lost_a_peer
from ipcmagic.cluster.torchworld import backend_for, world_env
from tests.conftest import run_in_job
from tests.test_engine_loss import FOUR_ENGINES_ON_TWO_NODES, N2_DIES_IN_1_S


def row(engine: int, host: str, rank: int | None) -> dict:
    return {"id": engine, "host": host, "rank": rank}


def test_each_engine_gets_a_ranks_variables():
    rows = [row(2, "n2", 2), row(0, "n1", 0), row(3, "n2", 3), row(1, "n1", 1)]
    env = world_env(rows, 29400)
    assert env[3] == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "29400",
    }
    assert [env[i]["LOCAL_RANK"] for i in range(4)] == ["0", "1", "0", "1"]
    # local engines after a restart: new ids, no MPI rank; on one host, the loopback address
    restarted = world_env([row(5, "vm", None), row(4, "vm", None)], 1234)
    assert {i: (e["RANK"], e["MASTER_ADDR"]) for i, e in restarted.items()} == {
        4: ("0", "127.0.0.1"),
        5: ("1", "127.0.0.1"),
    }


def test_the_backend_is_nccl_only_where_every_engine_has_a_gpu():
    assert backend_for({0: ("2.13.0", 1, 5), 1: ("2.13.0", 1, 6)}) == "nccl"
    assert backend_for({0: ("2.13.0", 1, 5), 1: ("2.13.0", 0, 6)}) == "gloo"
    with pytest.raises(ValueError, match="--torch needs torch on every engine, but engines 1, 2 cannot"):
        backend_for({0: ("2.13.0", 0, 5), 1: (None, 0, 6), 2: (None, 0, 7)})


def test_a_rank_whose_peer_ended_is_no_cause():
    """gloo's and NCCL's words on a peer's end make the failed rank collateral (its cell waits for
    the peer's loss to name it); a rank's own errors do not."""
    gloo = "[pair.cc:537] Read error [10.78.0.12]:1192: Connection reset by peer. This is typically ..."
    nccl = "NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error"
    assert lost_a_peer(RemoteError("RuntimeError", gloo, ""))
    assert lost_a_peer(RemoteError("DistBackendError", nccl, ""))
    assert not lost_a_peer(RemoteError("ValueError", "Connection reset by peer", ""))
    assert not lost_a_peer(RemoteError("RuntimeError", "CUDA out of memory", ""))


#: a %%px cell: each rank adds its rank to the tensor it keeps between cells
ADD_RANKS = "%%px\nt += dist.get_rank()\ndist.all_reduce(t)\n"


def rank_env() -> dict[str, str]:
    """Runs on an engine: the variables a launcher sets for a rank."""
    import os

    return {name: os.environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def px(ip, cell: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        ip.run_cell(cell).raise_error()


def test_the_engines_are_one_world_that_stays_between_cells(ip, in_allocation, torch_installed, capsys):
    ip.run_line_magic("ipcluster", "start -n 3 --torch")
    assert "the 3 engines are one gloo world" in capsys.readouterr().out
    px(ip, "%%px\nimport os, torch\nimport torch.distributed as dist\nt = torch.zeros(1)")
    for _ in range(2):  # t stays on the engines between cells
        px(ip, ADD_RANKS)
    view = ipcmagic.view()
    assert [float(t) for t in view["t"]] == [12.0] * 3  # (0+1+2) summed = 3; (3+0 + 3+1 + 3+2) = 12
    env = view.apply_sync(rank_env)
    assert env == [{"RANK": str(i), "WORLD_SIZE": "3", "LOCAL_RANK": str(i)} for i in range(3)]
    ip.run_line_magic("ipcluster", "restart")
    assert "one gloo world" in capsys.readouterr().out
    px(ip, "%%px\nimport torch\nimport torch.distributed as dist\nt = torch.ones(1)\ndist.all_reduce(t)")
    assert [float(t) for t in view["t"]] == [3.0] * 3, "the world is formed anew"
    ip.run_line_magic("ipcluster", "stop")


def test_a_rank_raising_before_a_collective_fails_the_cell_at_once(ip, in_allocation, torch_installed):
    """The others wait in gloo's all_reduce for the rank that raised, in C++, deaf to SIGINT: they
    are restarted, and the next cell runs in a world formed anew."""
    ip.run_line_magic("ipcluster", "start -n 3 --torch")
    px(ip, "%%px\nimport torch\nimport torch.distributed as dist\nt = torch.ones(1)")
    tic = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as said:
        cell = "%%px\nif dist.get_rank() == 1:\n    raise ValueError('rank 1 is unhappy')\ndist.all_reduce(t)"
        failed = ip.run_cell(cell).error_in_exec
    assert failed is not None and time.monotonic() - tic < 5.0
    assert "were restarted" in said.getvalue() or "being restarted" in said.getvalue(), said.getvalue()
    px(ip, "%%px\nimport torch\nimport torch.distributed as dist\nt = torch.ones(1)\ndist.all_reduce(t)")
    assert [float(t) for t in ipcmagic.view()["t"]] == [3.0] * 3
    ip.run_line_magic("ipcluster", "stop")


def test_the_interrupt_button_frees_ranks_waiting_in_a_collective(ip, in_allocation, torch_installed):
    """ipyparallel's %px sends SIGINT, which ranks waiting in gloo's all_reduce for an interrupted
    one never see: a grace time later they are restarted, and the world formed anew."""
    ip.run_line_magic("ipcluster", "start -n 3 --torch")
    px(ip, "%%px\nimport time, torch\nimport torch.distributed as dist\nt = torch.ones(1)")
    threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT)).start()  # the kernel's interrupt button
    tic = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as said:
        ip.run_cell("%%px\nif dist.get_rank() == 0:\n    time.sleep(600)\ndist.all_reduce(t)")
    assert time.monotonic() - tic < 10
    assert said.getvalue().strip().splitlines()[-1] == (
        "ipcmagic: engines 1, 2 did not stop on SIGINT within 1 s (ranks waiting in MPI or a collective for "
        "the others never return), so all 3 engines are being restarted: their variables are gone."
    )
    px(ip, "%%px\nimport torch\nimport torch.distributed as dist\nt = torch.ones(1)\ndist.all_reduce(t)")
    assert [float(t) for t in ipcmagic.view()["t"]] == [3.0] * 3
    ip.run_line_magic("ipcluster", "stop")


def test_local_engines_make_a_world_too(ip, outside_slurm, torch_installed):
    ip.run_line_magic("ipcluster", "start -n 2 --launcher local --torch")
    px(ip, "%%px\nimport torch\nimport torch.distributed as dist\nt = torch.ones(2)\ndist.all_reduce(t)")
    assert [t.tolist() for t in ipcmagic.view()["t"]] == [[2.0, 2.0]] * 2
    with pytest.raises(UsageError, match="one torch.distributed world, which no new process can join"):
        ip.run_line_magic("ipcluster", "restart --lost")  # local engines of no torch world could
    ip.run_line_magic("ipcluster", "stop")


#: in a job of the 2-node lab, the kernel on n1: a world over both nodes; then n2's share of the
#: engine step dies (as in a node failure) while the ranks run all_reduce in a loop
LOSE_A_NODE_OF_THE_WORLD = (
    FOUR_ENGINES_ON_TWO_NODES.replace('"start -n 4"', '"start -n 4 --torch"')
    + """
import socket
SUM_OF_ONES = "%%px\\nimport time, torch\\nimport torch.distributed as dist\\n"
SUM_OF_ONES += "t = torch.ones(1)\\ndist.all_reduce(t)"
def world():  # each rank's sum of ones over the world, and its host
    with contextlib.redirect_stdout(io.StringIO()):
        ip.run_cell(SUM_OF_ONES).raise_error()
    view = ipcmagic.view()
    return [[float(t), host] for t, host in zip(view["t"], view.apply_sync(socket.gethostname))]
before = world()
"""
    + N2_DIES_IN_1_S
    + """
said = io.StringIO()
with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
    failed = ip.run_cell("%%px\\nwhile True:\\n    dist.all_reduce(t)\\n    time.sleep(0.01)").error_in_exec
took = time.time() - died[0]
ip.run_line_magic("ipcluster", "restart")
after = world()
ip.run_line_magic("ipcluster", "stop")
print(json.dumps({"failed": type(failed).__name__, "said": said.getvalue().strip(), "before": before,
                  "after": after, "took": took}))
"""
)


#: what the cell ends with: n2's engines as the cause, the others stopped with the step
NODE_LOST = re.compile(
    r"ipcmagic: engine 2 \(MPI rank 2, pid \d+ on n2\), engine 3 \(MPI rank 3, pid \d+ on n2\) stopped "
    r"answering heartbeats while srun saw no end \(the node is unreachable\); engine 0 \(MPI rank 0, pid \d+ "
    r"on n1\), engine 1 \(MPI rank 1, pid \d+ on n1\) were stopped by ipcmagic with the srun step\. "
    r"%ipcluster restart starts all engines anew\."
)


def test_a_world_over_two_nodes_names_a_lost_node_and_forms_again(two_nodes, torch_installed, nothing_left):
    job = ["-N", "2", "--ntasks-per-node=2", "-J", "ipcmagic-torch-world"]
    out = run_in_job(job, ["-N", "1", "-n", "1"], LOSE_A_NODE_OF_THE_WORLD, two_nodes)
    seen = json.loads(out.splitlines()[-1])
    world = [[4.0, "n1"], [4.0, "n1"], [4.0, "n2"], [4.0, "n2"]]
    assert seen["before"] == world and seen["after"] == world, seen
    assert seen["failed"] != "NoneType"
    # the ranks on n1 fail at once, their gloo connections to n2 reset; the cell waits for the
    # controller's word on n2's engines (heartbeat tolerance, 3 s here) and names them as the cause
    assert NODE_LOST.fullmatch(seen["said"].splitlines()[-1]), seen["said"]
    print(f"the cell failed {seen['took']:.1f} s after n2's engines died")
