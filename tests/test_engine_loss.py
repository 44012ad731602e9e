"""Engines that end while a cell runs (issues 18 and 21): the cell fails within 2 s of the death,
saying which ranks ended how, in the launcher's words; status, ``%px`` and ``%%pxtimeout`` agree
with what is alive; ``%ipcluster restart`` makes the cluster whole.

Times are measured in the test's own timeline: the dying rank writes the time of its death to a
file (``/var/tmp`` is shared by the 2-node lab's nodes), the test takes the time the cell returned.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ipyparallel.error import CompositeError
from IPython.core.error import UsageError

import ipcmagic
from ipcmagic.cluster.failfast import FailedFast
from ipcmagic.cluster.losses import EnginesLost, process_alive
from tests.conftest import run_in_job

#: ways a rank dies, as the dying rank's code
DEATHS = {
    "exit": "os._exit(3)",
    "sigkill": "os.kill(os.getpid(), signal.SIGKILL)",  # what the OOM killer sends
    "segfault": "ctypes.string_at(0)",  # a crash in compiled code
}
#: how srun and ipcmagic say it
SAID = {
    "exit": "exited with code 3",
    "sigkill": "was killed by SIGKILL (Killed; often the out-of-memory killer)",
    "segfault": "was killed by SIGSEGV (Segmentation fault)",
}
#: the longest a running cell may go on after a rank's death
FAILS_WITHIN = 2.0


def dying_cell(rank: int, death: str, stamp: str) -> str:
    """``rank`` notes the time and dies; the others wait for it in an MPI barrier."""
    return (
        "import ctypes, os, signal, time\n"
        "from mpi4py import MPI\n"
        "time.sleep(0.5)\n"
        f"if MPI.COMM_WORLD.rank == {rank}:\n"
        f"    open({stamp!r}, 'w').write(repr(time.time()))\n"
        f"    {death}\n"
        "MPI.COMM_WORLD.Barrier()"
    )


def lose_a_rank(ip: Any, start: str, rank: int, death: str) -> dict[str, Any]:
    """Start engines, run a cell in which ``rank`` dies by ``death``; what the user sees then,
    and whether a restart makes the cluster whole. Runs here and in a job of the 2-node lab."""
    ip.run_line_magic("ipcluster", f"start {start}")
    cluster = ipcmagic._magics.cluster
    roster = {i: (row["pid"], row["host"]) for i, row in cluster.roster.items()}
    fd, stamp = tempfile.mkstemp(dir="/var/tmp", prefix="ipcmagic-death-")
    os.close(fd)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            failed = ip.run_cell("%%px\n" + dying_cell(rank, DEATHS[death], stamp)).error_in_exec
        after = time.time() - float(Path(stamp).read_text())
    finally:
        os.remove(stamp)
    states = [row["state"] for row in cluster.engines()]
    with contextlib.redirect_stdout(io.StringIO()):
        refused = ip.run_cell("%px x = 1").error_in_exec
    ip.run_line_magic("ipcluster", "restart")
    whole = ipcmagic.client()[:].apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.allreduce(1))
    ip.run_line_magic("ipcluster", "stop")
    return {
        "failed": type(failed).__name__,
        "after": after,
        "said": said.getvalue().strip(),
        "states": states,
        "refused": f"{type(refused).__name__}: {refused}",
        "whole": whole,
        "roster": roster,
    }


def engines(seen: dict[str, Any], ids: list[int]) -> str:
    roster = seen["roster"]
    return ", ".join(f"engine {i} (MPI rank {i}, pid {roster[i][0]} on {roster[i][1]})" for i in ids)


def assert_told_at_once(seen: dict[str, Any], n: int, rank: int, death: str) -> None:
    others = [i for i in range(n) if i != rank]
    loss = (
        f"{engines(seen, [rank])} {SAID[death]}; srun then stopped the others: "
        f"{engines(seen, others)} with SIGKILL. %ipcluster restart starts all engines anew."
    )
    assert seen["failed"] == "AlreadyDisplayedError", seen
    assert seen["after"] <= FAILS_WITHIN, f"the cell failed {seen['after']:.1f} s after the death"
    assert seen["said"] == f"ipcmagic: {loss}"
    assert seen["states"] == ["gone"] * n
    assert seen["refused"] == f"EnginesLost: {loss}", "no bare KeyError"
    assert seen["whole"] == [n] * n


@pytest.mark.parametrize("death", list(DEATHS))
def test_a_dying_rank_fails_the_cell_at_once(ip, in_allocation, death):
    """Before: 11.2 s (the heartbeat tolerance), then "3 errors" and every engine "died"."""
    assert_told_at_once(lose_a_rank(ip, "-n 3", 1, death), 3, 1, death)


LOSE_A_RANK_IN_A_JOB = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
from tests.test_engine_loss import lose_a_rank
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
print(json.dumps(lose_a_rank(ip, "-n 4", 3, "exit")))
"""


def test_a_rank_on_the_other_node_fails_the_cell_at_once(two_nodes, nothing_left):
    """The kernel on n1, rank 3 on n2 exits."""
    out = run_in_job(
        ["-N", "2", "--ntasks-per-node=2", "-J", "ipcmagic-loss"],
        ["-n", "1"],
        LOSE_A_RANK_IN_A_JOB,
        two_nodes,
    )
    seen = json.loads(out.splitlines()[-1])
    seen["roster"] = {int(i): row for i, row in seen["roster"].items()}
    assert seen["roster"][3][1] == "n2" and seen["roster"][0][1] == "n1"
    assert_told_at_once(seen, 4, 3, "exit")


def test_mpirun_says_how_its_first_rank_failed(ip, outside_slurm, mpirun):
    seen = lose_a_rank(ip, "-n 3 --launcher mpirun --launcher-args=--oversubscribe", 1, "exit")
    # Open MPI's mpirun takes about 2 s to stop the other ranks and exit; the cell fails as it exits
    assert seen["after"] <= FAILS_WITHIN + 1, f"the cell failed {seen['after']:.1f} s after the death"
    assert seen["said"].startswith(f"ipcmagic: {engines(seen, [1])} exited with code 3; ")
    assert "ended with the mpirun step" in seen["said"], seen["said"]  # before or after mpirun exits
    assert seen["whole"] == [3, 3, 3]


def test_a_frozen_engine_is_named_and_refused_until_restart(ip, in_allocation, capsys):
    """SIGSTOP past the heartbeat tolerance, then SIGCONT: its process lives, but the controller
    let it go; every later %px raised a bare KeyError: 1 until a restart (issue 21)."""
    cluster = ipcmagic._magics.cluster
    cluster.heartbeat_tolerance = 2.0
    ip.run_line_magic("ipcluster", "start -n 3")
    frozen = ipcmagic.client()[1].apply_sync(os.getpid)
    os.kill(frozen, signal.SIGSTOP)
    try:
        capsys.readouterr()
        failed = ip.run_cell("%%px\nimport time\ntime.sleep(1)").error_in_exec
    finally:
        os.kill(frozen, signal.SIGCONT)
    lost = f"engine 1 (MPI rank 1, pid {frozen} on {cluster.roster[1]['host']}) stopped answering heartbeats"
    assert failed is not None and lost in capsys.readouterr().err
    with pytest.raises(
        EnginesLost, match=rf"^{re.escape(lost)} .*\. %ipcluster restart starts all engines anew"
    ):
        ip.run_line_magic("px", "x = 1")
    assert [row["state"] for row in cluster.engines()] == ["alive", "gone", "alive"]
    ip.run_line_magic("ipcluster", "restart")
    assert_full_cluster(ip, 3)


#: rank 1 exits while the others wait for it in MPI (ipyparallel#435's everyday case)
RANK_1_EXITS = dying_cell(1, DEATHS["exit"], "/dev/null")


def assert_full_cluster(ip, n: int) -> None:
    """Every engine alive in status, and %%px runs on all of them."""
    assert [row["state"] for row in ipcmagic._magics.cluster.engines()] == ["alive"] * n
    ip.run_cell_magic("px", "", "x = 1")
    assert ipcmagic.client()[:]["x"] == [1] * n


def test_pxtimeout_fails_as_px_when_a_rank_dies(ip, in_allocation):
    """It failed after its timeout with a bare KeyError: 1 (issue 21); now at once, as %%px."""
    ip.run_line_magic("ipcluster", "start -n 3")
    tic = time.monotonic()
    with pytest.raises(CompositeError, match="died while running task"):
        ip.run_cell_magic("pxtimeout", "60", RANK_1_EXITS)
    assert time.monotonic() - tic < 10
    ip.run_line_magic("ipcluster", "restart")
    assert_full_cluster(ip, 3)
    ip.run_line_magic("ipcluster", "stop")


def test_a_lost_engine_fails_the_cell_at_once_and_the_others_keep_their_variables(ip, outside_slurm):
    """Issue 37 item 3: one local engine exits while the others sleep for a minute; the cell ran
    until they woke up."""
    ip.run_line_magic("ipcluster", "start -n 3 --launcher local")
    ip.run_cell_magic("px", "", "import os\nx = os.getpid()")
    lost = ipcmagic.client()[1]["x"]
    cell = f"import os, time\nif os.getpid() == {lost}:\n    os._exit(3)\ntime.sleep(60)"
    tic = time.monotonic()
    with pytest.raises(
        FailedFast, match=r"engines 0, 2 still ran after engine 1 was lost; they were interrupted"
    ):
        ipcmagic.view().execute(cell)
    assert time.monotonic() - tic < 1 + FAILS_WITHIN, "the death, then at most 2 s"
    kept = ipcmagic.client()[[0, 2]]
    assert kept["x"] == kept.apply_sync(os.getpid), "the same processes, with their variables"
    ip.run_line_magic("ipcluster", "stop")


def test_lost_engines_come_back_by_themselves_a_bounded_number_of_times(ip, in_allocation):
    """``c.IPCluster.restart_lost_engines`` (ipyparallel#706): each loss restarts the engines at
    once with a line saying so, until the hour's limit stops a crash loop."""
    cluster = ipcmagic._magics.cluster
    cluster.restart_lost_engines = 2
    try:
        ip.run_line_magic("ipcluster", "start -n 3")
        said = []
        for _ in range(3):
            with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
                assert ip.run_cell("%%px\n" + dying_cell(1, DEATHS["sigkill"], "/dev/null")).error_in_exec
                ran = ip.run_cell("%%px\nfrom mpi4py import MPI\nworld = MPI.COMM_WORLD.allreduce(1)")
            said.append(err.getvalue().strip().splitlines()[-1])
            if ran.error_in_exec is None:
                assert ipcmagic.client()[:]["world"] == [3, 3, 3]
        for k in (1, 2):
            assert said[k - 1].endswith(
                f"with SIGKILL. All 3 engines are being restarted (automatic restart {k} of 2 this hour, "
                "c.IPCluster.restart_lost_engines): their variables are gone."
            ), said
        assert said[2].endswith(
            "They were not restarted: 2 automatic restarts in the last hour is "
            "c.IPCluster.restart_lost_engines's limit; %ipcluster restart starts all engines anew."
        ), said
        assert isinstance(ran.error_in_exec, EnginesLost), "the third time they stay lost"
    finally:
        cluster.restart_lost_engines = 0
        ip.run_line_magic("ipcluster", "stop")


#: what a C or Fortran library may print: a byte that is no UTF-8
LATIN_1 = "import os\n_ = os.write(1, 'Temp\\xe9rature\\n'.encode('latin-1'))"


@pytest.mark.parametrize("launcher", ["srun", "local"])
def test_any_bytes_an_engine_prints_break_nothing(ip, in_allocation, launcher):
    """Before (issue 37): after one Latin-1 byte on an engine's stdout, restart and stop raised
    UnicodeDecodeError, status showed dead engines as busy and a death was noticed after 11.2 s."""
    ip.run_line_magic("ipcluster", f"start -n 3 --launcher {launcher}")
    ip.run_cell_magic("px", "", LATIN_1)
    ip.run_line_magic("ipcluster", "restart")
    ip.run_cell_magic("px", "", LATIN_1)
    cluster, client = ipcmagic._magics.cluster, ipcmagic.client()
    os.kill(client[client.ids[1]].apply_sync(os.getpid), signal.SIGKILL)  # local: new ids
    killed = time.monotonic()
    while cluster.engines()[1]["state"] != "gone" and time.monotonic() - killed < 3 * FAILS_WITHIN:
        time.sleep(0.05)
    noticed = time.monotonic() - killed
    assert noticed <= FAILS_WITHIN, f"the death was noticed after {noticed:.1f} s"
    ip.run_line_magic("ipcluster", "stop")


@pytest.mark.parametrize("launcher", ["srun", "local"])
def test_exit_in_a_cell_ends_that_engine(ip, in_allocation, launcher):
    """Before (issue 37, item 4): ``exit()`` left an engine that beat but ran nothing, and the next
    ``%px`` hung forever."""
    ip.run_line_magic("ipcluster", f"start -n 3 --launcher {launcher}")
    cluster, client = ipcmagic._magics.cluster, ipcmagic.client()
    assert ip.run_cell(f"%%px --targets {client.ids[1]}\nexit()").success
    asked = time.monotonic()
    while cluster.engines()[1]["state"] != "gone" and time.monotonic() - asked < 3 * FAILS_WITHIN:
        time.sleep(0.05)
    ended = time.monotonic() - asked
    assert ended <= FAILS_WITHIN, f"the engine was seen to end after {ended:.1f} s"
    with contextlib.redirect_stdout(io.StringIO()):
        refused = ip.run_cell("%px x = 1").error_in_exec
    assert isinstance(refused, EnginesLost) and "engine 1 (" in str(refused), refused
    ip.run_line_magic("ipcluster", "restart")
    assert_full_cluster(ip, 3)
    ip.run_line_magic("ipcluster", "stop")


def test_status_shows_the_engines_of_an_ended_step_as_gone(ip, in_allocation):
    """SIGKILL of one srun engine ends the whole step (PMIx); status showed the others as busy."""
    ip.run_line_magic("ipcluster", "start -n 3")
    pid = ipcmagic.client()[1].apply_sync(os.getpid)
    os.kill(pid, signal.SIGKILL)
    time.sleep(2)
    rows = ipcmagic._magics.cluster.engines()
    assert [row["state"] for row in rows] == ["gone"] * 3, rows
    assert rows[1]["pid"] == pid  # as started: which one it was
    ip.run_line_magic("ipcluster", "restart")
    assert_full_cluster(ip, 3)
    ip.run_line_magic("ipcluster", "stop")


def test_watching_work_fails_at_once_too(ip, in_allocation):
    """%pxwatch follows non-blocking work; a rank's death ends the watch within 2 s."""
    ip.run_line_magic("ipcluster", "start -n 3")
    ip.run_cell_magic(
        "px",
        "--noblock -o work",
        "import time\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Barrier()\ntime.sleep(60)",
    )
    victim = ipcmagic._magics.cluster.roster[2]["pid"]
    threading.Timer(1, os.kill, (victim, signal.SIGKILL)).start()
    died = time.monotonic() + 1
    with pytest.raises(Exception, match="died"):
        ip.run_line_magic("pxwatch", "work")
    assert time.monotonic() - died <= FAILS_WITHIN
    ip.run_line_magic("ipcluster", "stop")


#: the start of a kernel in a job of the 2-node lab, on n1: 4 engines (2 on each node), a heartbeat
#: tolerance of 3 s, ``roster`` (engine id -> pid, host)
FOUR_ENGINES_ON_TWO_NODES = """
import contextlib, io, json, os, signal, sys, threading, time
import psutil
from IPython.core.interactiveshell import InteractiveShell
import ipcmagic
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
cluster = ipcmagic._magics.cluster
cluster.heartbeat_tolerance = 3.0
ip.run_line_magic("ipcluster", "start -n 4")
roster = {i: (row["pid"], row["host"]) for i, row in cluster.roster.items()}
"""


def seen_on_two_nodes(script: str, name: str, env: dict[str, str]) -> dict[str, Any]:
    """What a kernel script that starts with FOUR_ENGINES_ON_TWO_NODES printed last (JSON), its
    ``roster`` keyed by engine id; it ran in job ``name`` of the 2-node lab, 2 engines per node."""
    out = run_in_job(["-N", "2", "--ntasks-per-node=2", "-J", name], ["-N", "1", "-n", "1"], script, env)
    seen = json.loads(out.splitlines()[-1])
    seen["roster"] = {int(i): row for i, row in seen["roster"].items()}
    assert [host for _, host in seen["roster"].values()] == ["n1", "n1", "n2", "n2"]
    return seen


#: in a job of the 2-node lab, the kernel on n1: one engine on n2 stops (SIGSTOP, as a debugger
#: attached to it would) during a cell, for longer than the heartbeat tolerance
STALL_ONE_ENGINE_ELSEWHERE = (
    FOUR_ENGINES_ON_TWO_NODES
    + """
stalled = roster[3][0]
threading.Timer(1.0, os.kill, (stalled, signal.SIGSTOP)).start()
said = io.StringIO()
with contextlib.redirect_stderr(said):
    failed = ip.run_cell("%%px\\nimport time\\ntime.sleep(6)").error_in_exec
states = [row["state"] for row in cluster.engines()]
pids = ipcmagic.client()[:].apply_sync(os.getpid)  # the engines that remain
os.kill(stalled, signal.SIGCONT)
ip.run_line_magic("ipcluster", "stop")
print(json.dumps({"failed": type(failed).__name__, "said": said.getvalue().strip(), "states": states,
                  "pids": pids, "roster": roster}))
"""
)


def test_one_stalled_engine_elsewhere_loses_that_engine_alone(two_nodes, nothing_left):
    """A debugger on one engine of the other node for longer than the heartbeat tolerance ended
    the whole srun step (every engine's variables gone), as if the node had been lost; its other
    engine kept answering, and so the node was fine."""
    seen = seen_on_two_nodes(STALL_ONE_ENGINE_ELSEWHERE, "ipcmagic-stall", two_nodes)
    roster = seen["roster"]
    assert seen["failed"] != "NoneType"
    stalled = f"{engines(seen, [3])} stopped answering heartbeats while the others on n2 answered"
    assert stalled in seen["said"], seen["said"]
    assert seen["states"][:3] != ["gone"] * 3 and seen["states"][3] == "gone", seen["states"]
    assert seen["pids"] == [roster[i][0] for i in range(3)], "the others run on, with their variables"


#: n2's share of the engines' step (its slurmstepd, its engines and their nannies) dies at once
#: 1 s from now, as in a node failure; ``died`` holds when
N2_DIES_IN_1_S = """
engines = [psutil.Process(row["pid"]) for row in cluster.roster.values() if row["host"] == "n2"]
share = [*{e.parent() for e in engines}, *engines, *(c for e in engines for c in e.children(recursive=True))]
died = []
def node_dies():
    died.append(time.time())
    for process in share:
        process.kill()
threading.Timer(1.0, node_dies).start()
"""


#: in a job of the 2-node lab, the kernel on n1: n2's share of the step dies (its slurmstepd, its
#: engines and their nannies, at once, as in a node failure) while the ranks wait in MPI barriers
LOSE_A_NODE_IN_A_JOB = (
    FOUR_ENGINES_ON_TWO_NODES
    + N2_DIES_IN_1_S
    + """
said = io.StringIO()
with contextlib.redirect_stderr(said):
    failed = ip.run_cell("%%px\\nimport time\\nfrom mpi4py import MPI\\nwhile True:\\n"
                         "    MPI.COMM_WORLD.Barrier()\\n    time.sleep(0.01)").error_in_exec
after = time.time() - died[0]
states = [row["state"] for row in cluster.engines()]
ip.run_line_magic("ipcluster", "restart")
hosts = ipcmagic.view().apply_sync(lambda: __import__("socket").gethostname())
tic = time.time()
ip.run_line_magic("ipcluster", "stop")
print(json.dumps({"failed": type(failed).__name__, "after": after, "said": said.getvalue().strip(),
                  "states": states, "hosts": hosts, "stop": time.time() - tic, "roster": roster}))
"""
)


def test_a_node_lost_mid_cell_fails_it_and_the_rest_goes_on(two_nodes, nothing_left):
    """Issue 16: the ranks on n1 waited for n2's in MPI forever; now the step is stopped as Slurm
    stops one that loses a node, and the cell fails within the heartbeat tolerance (3 s here)."""
    seen = seen_on_two_nodes(LOSE_A_NODE_IN_A_JOB, "ipcmagic-node-loss", two_nodes)
    assert seen["failed"] == "AlreadyDisplayedError"
    assert seen["after"] <= 3.0 + FAILS_WITHIN, f"the cell failed {seen['after']:.1f} s after the node"
    assert seen["said"] == (
        f"ipcmagic: {engines(seen, [2, 3])} stopped answering heartbeats while srun saw no end (the node is "
        f"unreachable); {engines(seen, [0, 1])} were stopped by ipcmagic with the srun step. "
        "%ipcluster restart starts all engines anew."
    )
    assert seen["states"] == ["gone"] * 4
    assert seen["hosts"] == ["n1", "n1", "n2", "n2"], "restarted on the same allocation"
    assert seen["stop"] <= 5.0
    # nothing_left: no process on either node, no step, no directory


def test_engines_without_an_mpi_world_go_on_without_the_lost(ip, outside_slurm):
    """Issue 37 item 6: after one local engine was lost, %px refused to run, and a restart threw
    away the healthy engines' variables. Now they go on, and ``restart --lost`` replaces the lost
    one; a frozen one is ended for good then (it ran the cell after SIGCONT, item 3)."""
    cluster = ipcmagic._magics.cluster
    cluster.heartbeat_tolerance = 2.0
    ip.run_line_magic("ipcluster", "start -n 3 --launcher local")
    ip.run_cell("%px import os, time\n%px x = os.getpid()")
    pids = dict(zip(ipcmagic.client().ids, ipcmagic.client()[:]["x"], strict=True))
    for gone, how, then in ((1, "exited with code 3", [0, 2]), (2, "stopped answering heartbeats", [0, 3])):
        if gone == 2:
            os.kill(pids[2], signal.SIGSTOP)
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            cell = f"%%px\nif x == {pids[gone]}:\n    os._exit(3)\ntime.sleep(0.5)"
            assert ip.run_cell(cell if gone == 1 else "%%px\ntime.sleep(3)").error_in_exec is not None
        said = err.getvalue().strip().splitlines()[-1]
        assert said.startswith(f"ipcmagic: engine {gone} (pid {pids[gone]} on ") and how in said, said
        assert said.endswith(
            f"%px runs on engines {', '.join(map(str, then))} from now on; %ipcluster restart --lost "
            "replaces the lost ones (%ipcluster restart: all anew)."
        ), said
        with contextlib.redirect_stdout(io.StringIO()):
            assert ip.run_cell("%px y = x").error_in_exec is None
        assert ipcmagic.view()["y"] == [pids[i] for i in then], "the others, with their variables"
        ip.run_line_magic("ipcluster", "restart --lost")
        new = max(ipcmagic.client().ids)
        assert ipcmagic.view().targets == [*then, new]
        ip.run_cell("%px import os, time\n%px x = os.getpid()")  # the new one
        assert ipcmagic.view()["x"] == [*(pids[i] for i in then), ipcmagic.client()[new]["x"]]
        pids[new] = ipcmagic.client()[new]["x"]
    deadline = time.monotonic() + 5
    while process_alive(pids[2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pids[2]), "the frozen engine was ended for good"
    with pytest.raises(UsageError, match="No engine is lost"):
        ip.run_line_magic("ipcluster", "restart --lost")
    ip.run_line_magic("ipcluster", "stop")


#: in a job of the 2-node lab, the kernel on n1: a task of another step sleeps on n2, and is
#: ended as a lost engine there is (an engine of no MPI world that the controller let go)
KILL_ON_THE_OTHER_NODE = """
import json, os, subprocess, time
from ipcmagic.cluster.halting import kill_engines
sleeper = ["bash", "-c", "echo $SLURM_JOB_ID.$SLURM_STEP_ID $$; exec sleep 300"]
srun = ["srun", "--overlap", "-w", "n2", "-N1", "-n1"]
task = subprocess.Popen([*srun, *sleeper], stdout=subprocess.PIPE, text=True)
step, pid = task.stdout.readline().split()
tic = time.time()
kill_engines([{"host": "n2", "pid": int(pid), "step": step}])
task.wait(10)
print(json.dumps({"after": time.time() - tic, "returncode": task.returncode}))
"""


def test_a_lost_engine_on_another_node_is_ended_there(two_nodes, nothing_left):
    """Issue 37 item 3 on the job's other nodes: a frozen engine the controller let go (no MPI
    world) would run on when it thaws; a one-task step on its node SIGKILLs it."""
    job = ["-N", "2", "-J", "ipcmagic-kill"]
    out = run_in_job(job, ["-N", "1", "-n", "1"], KILL_ON_THE_OTHER_NODE, two_nodes)
    seen = json.loads(out.splitlines()[-1])
    assert seen["returncode"] != 0 and seen["after"] < 10, seen


def test_mpi_ranks_cannot_be_replaced_one_by_one(ip, in_allocation):
    ip.run_line_magic("ipcluster", "start -n 2")
    with pytest.raises(UsageError, match="srun runs all engines as one job step, and MPI ranks are one"):
        ip.run_line_magic("ipcluster", "restart --lost")
    ip.run_line_magic("ipcluster", "stop")
