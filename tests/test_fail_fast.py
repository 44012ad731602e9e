"""A rank's exception fails the cell at once (issue 33): the others are interrupted, and restarted
where they wait in MPI for the failed rank; the next ``%%px`` runs.

Before: the cell of :data:`RAISE_BEFORE_BARRIER` still ran after 90 s, and after the interrupt
button the next ``%%px`` failed too. Times are measured from the raise: the raising rank writes the
time to a file (``/var/tmp`` is shared by the 2-node lab's nodes).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from ipyparallel.error import CompositeError

import ipcmagic
from ipcmagic.cluster.failfast import FailedFast
from tests.conftest import run_in_job

#: the longest a cell may go on after one of its ranks raised
FAILS_WITHIN = 2.0


def raising_cell(rank: str, then: str, stamp: str) -> str:
    """A cell in which the rank ``rank`` (an expression of ``size``) notes the time and raises
    ValueError, after printing; then every other rank does ``then``."""
    return (
        "import time\n"
        "from mpi4py import MPI\n"
        "comm = MPI.COMM_WORLD\n"
        "size = comm.size\n"
        "print('before', comm.rank)\n"
        f"if comm.rank == {rank}:\n"
        f"    open({stamp!r}, 'w').write(repr(time.time()))\n"
        "    raise ValueError(f'rank {comm.rank} is unhappy')\n"
        f"{then}"
    )


#: where the other ranks are when one raises: (the raising rank, what the others do, whether they
#: are stuck in MPI)
CASES = {
    "before a barrier": ("1", "comm.Barrier()", True),
    "inside an allreduce": ("size - 1", "comm.allreduce(comm.rank)", True),
    "in Python": ("size - 1", "time.sleep(60)", False),
}


def raise_in_a_cell(ip: Any, start: str, case: str, stream: bool = True) -> dict[str, Any]:
    """Start engines, set a variable, run the cell of ``case``; what the user saw, and whether the
    next ``%%px`` runs. Runs here and in a job of the 2-node lab."""
    rank, then, _ = CASES[case]
    ip.run_line_magic("ipcluster", f"start {start}")
    cluster = ipcmagic._magics.cluster
    roster = {i: (row["pid"], row["host"]) for i, row in cluster.roster.items()}
    ip.run_cell("%px kept = 1")
    fd, stamp = tempfile.mkstemp(dir="/var/tmp", prefix="ipcmagic-raise-")
    os.close(fd)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cell = ("%%px\n" if stream else "%%px --no-stream\n") + raising_cell(rank, then, stamp)
            failed = ip.run_cell(cell).error_in_exec
        after = time.time() - float(Path(stamp).read_text())
    finally:
        os.remove(stamp)
    with contextlib.redirect_stdout(io.StringIO()):
        nxt = ip.run_cell(
            "%%px\nfrom mpi4py import MPI\nworld = MPI.COMM_WORLD.allreduce(1)\nkept = globals().get('kept')"
        )
    client = ipcmagic.client()
    seen = {
        "failed": type(failed).__name__,
        "shown": "\n".join(failed.render_traceback()) if isinstance(failed, CompositeError) else "",
        "after": after,
        "out": out.getvalue(),
        "err": err.getvalue().strip(),
        "next": nxt.error_in_exec is None and client[:]["world"] == [len(roster)] * len(roster),
        "kept": client[:]["kept"],
        "pids": client[:].apply_sync(os.getpid),
        "roster": roster,
    }
    ip.run_line_magic("ipcluster", "stop")
    return seen


def engine(seen: dict[str, Any], i: int) -> str:
    pid, host = seen["roster"][i]
    return f"engine {i} (MPI rank {i}, pid {pid} on {host})"


def others(seen: dict[str, Any], failed: int) -> str:
    ids = [i for i in seen["roster"] if i != failed]
    return f"engine {ids[0]}" if len(ids) == 1 else "engines " + ", ".join(map(str, ids))


def uncoloured(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def assert_failed_fast(
    seen: dict[str, Any], case: str, failed: int, stream: bool = True, within: float = FAILS_WITHIN
) -> None:
    """The failed rank's traceback, the line on the others, the time (at most ``within`` seconds
    after the raise), and the engines after."""
    n, stuck = len(seen["roster"]), CASES[case][2]
    ended = (
        f"did not stop on SIGINT within 1 s (ranks waiting in MPI for a failed rank never return), so "
        f"all {n} engines are being restarted: their variables are gone."
        if stuck
        else "they were interrupted (KeyboardInterrupt) and keep their variables."
    )
    line = f"ipcmagic: {engine(seen, failed)} failed while {others(seen, failed)} still ran; "
    line += ("they " if stuck else "") + ended
    told = uncoloured(seen["out"] + seen["err"])
    assert f"ValueError: rank {failed} is unhappy" in told, told
    assert told.count("Traceback") == 1, "the failed one's alone"
    # a rank that holds the GIL while it waits (mpi4py's allreduce of objects) cannot send its output
    printed = range(n) if case != "inside an allreduce" else [failed]
    assert all(f"before {i}" in told for i in printed), "what the ranks printed first"
    assert seen["err"].endswith(line) and seen["err"].count("ipcmagic:") == 1, "said once, last"
    if stream:
        assert seen["failed"] == "AlreadyDisplayedError", seen
    else:
        assert seen["failed"] == "FailedFast" and "ValueError: rank 1" in uncoloured(seen["shown"]), seen
    assert seen["after"] <= within, f"the cell failed {seen['after']:.1f} s after the raise"
    assert seen["next"], "the next %%px runs on a whole MPI world"
    if stuck:
        assert seen["kept"] == [None] * n and seen["pids"] != [pid for pid, _ in seen["roster"].values()]
    else:
        assert seen["kept"] == [1] * n and seen["pids"] == [pid for pid, _ in seen["roster"].values()]


@pytest.mark.parametrize("case", list(CASES))
def test_an_exception_fails_the_cell_at_once(ip, in_allocation, case):
    """Issue 33's cell and its kin, 4 srun engines."""
    seen = raise_in_a_cell(ip, "-n 4", case)
    assert_failed_fast(seen, case, 1 if case == "before a barrier" else 3)


def test_an_unstreamed_cell_shows_what_the_ranks_printed(ip, in_allocation):
    """``%%px --no-stream`` (ipyparallel#661): outputs, then the error with the line on the others."""
    seen = raise_in_a_cell(ip, "-n 3", "before a barrier", stream=False)
    assert_failed_fast(seen, "before a barrier", 1, stream=False)


def test_mpirun_ranks_fail_fast_too(ip, outside_slurm, mpirun):
    """1.4 s here (as srun's); once 2.4 s in a CI run on the loaded 2-core machine: mpirun's
    restart is less predictable than srun's, so the bound is looser than issue 33's 2 s."""
    seen = raise_in_a_cell(ip, "-n 3 --launcher mpirun --launcher-args=--oversubscribe", "before a barrier")
    assert_failed_fast(seen, "before a barrier", 1, within=3.0)


RAISE_IN_A_JOB = """
import json
from IPython.core.interactiveshell import InteractiveShell
from tests.test_fail_fast import raise_in_a_cell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
print(json.dumps(raise_in_a_cell(ip, "-n 4", "inside an allreduce")))
"""


def test_a_rank_on_the_other_node_fails_the_cell_at_once(two_nodes, nothing_left):
    """The kernel on n1; rank 3, on n2, raises while the others are in an allreduce."""
    job = ["-N", "2", "--ntasks-per-node=2", "-J", "ipcmagic-raise"]
    out = run_in_job(job, ["-n", "1"], RAISE_IN_A_JOB, two_nodes)
    seen = json.loads(out.splitlines()[-1])
    seen["roster"] = {int(i): row for i, row in seen["roster"].items()}
    assert [host for _, host in seen["roster"].values()] == ["n1", "n1", "n2", "n2"]
    assert_failed_fast(seen, "inside an allreduce", 3)


def test_a_blocking_execute_and_autopx_fail_fast(ip, in_allocation):
    ip.run_line_magic("ipcluster", "start -n 3")
    cell = "import os, time\nif os.environ['PMIX_RANK'] == '2':\n    raise KeyError('two')\ntime.sleep(60)"
    tic = time.monotonic()
    with pytest.raises(FailedFast, match="engine 2 .* failed while engines 0, 1 still ran"):
        ipcmagic.view().execute(cell)
    ip.run_line_magic("autopx", "")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        ip.run_cell(cell)
    ip.run_line_magic("autopx", "")
    assert time.monotonic() - tic < 2 * FAILS_WITHIN + 1
    assert "engine 2 (MPI rank 2" in err.getvalue() and "keep their variables" in err.getvalue()
    ip.run_line_magic("ipcluster", "stop")


def test_no_fail_fast_waits_for_every_engine(ip, in_allocation):
    """``c.IPCluster.fail_fast = False``: ipyparallel's behaviour, every engine's error is kept."""
    ipcmagic._magics.cluster.fail_fast = False
    try:
        ip.run_line_magic("ipcluster", "start -n 3")
        cell = "import os, time\nif os.environ['PMIX_RANK'] == '2':\n    raise KeyError('two')\ntime.sleep(2)"
        tic = time.monotonic()
        with pytest.raises(CompositeError) as failed:
            ipcmagic.view().execute(cell)
        assert time.monotonic() - tic >= 2 and not isinstance(failed.value, FailedFast)
        assert ipcmagic.client()[:].apply_sync(lambda: 1) == [1, 1, 1]
    finally:
        ipcmagic._magics.cluster.fail_fast = True
        ip.run_line_magic("ipcluster", "stop")
