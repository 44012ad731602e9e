"""How ranks ended, read from the launchers' real reports (texts as srun 22.05, ipcmagic's standalone
launcher and Open MPI 4.1 print them) and said in one sentence."""

from __future__ import annotations

import time

from ipcmagic.base.exits import KILLED_HINT, Ended, by_returncode, describe, rank_exits
from ipcmagic.cluster.losses import describe_loss

SRUN_STEP_ENDED = """\
srun: error: vm: task 1: Exited with exit code 3
slurmstepd-vm: error:  mpi/pmix_v4: _errhandler: vm [0]: pmixp_client_v2.c:211: Error handler invoked
srun: Job step aborted: Waiting up to 7 seconds for job step to finish.
slurmstepd-vm: error: *** STEP 43669012.1 ON vm CANCELLED AT 2026-11-29T01:50:13 ***
srun: error: vm: tasks 0,2: Killed
"""
OMPI_EXIT = """\
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[26364,1],1]
  Exit code:    3
"""
OMPI_SIGNAL = "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).\n"


def test_srun_reports_in_their_order_the_first_first():
    assert rank_exits(SRUN_STEP_ENDED) == [
        Ended((1,), "exited with code 3", "vm"),
        Ended((0, 2), "was killed by SIGKILL (Killed)", "vm"),
    ]


def test_every_srun_task_list_form_and_signal():
    said = rank_exits(
        "srun: error: n1: tasks 0-1: Exited with exit code 1\n"
        "srun: error: n2: tasks 2,4: Exited with exit code 1\n"
        "srun: error: n2: task 3: Segmentation fault (core dumped)\n"
        "srun: error: n2: task 5: Out Of Memory\n"
        "srun: error: n1: task 0: Killed\n"  # reported twice: the first counts
    )
    assert describe(said) == (
        "ranks 0, 1, 2, 4 exited with code 1; rank 3 was killed by SIGSEGV (Segmentation fault); "
        "rank 5 was killed by the OOM killer (Out Of Memory)"
    )
    assert said[1].node == "n2"


def test_the_standalone_launcher_reports_as_srun_does():
    said = rank_exits("ipcmagic: error: vm: task 1: Killed\nipcmagic: error: vm: task 0: Terminated\n")
    assert describe(said, "ipcmagic") == (
        f"rank 1 {KILLED_HINT}; ipcmagic then stopped the others: rank 0 with SIGTERM"
    )


def test_open_mpi_reports():
    assert rank_exits(OMPI_EXIT) == [Ended((1,), "exited with code 3")]
    assert rank_exits(OMPI_SIGNAL) == [Ended((1,), "was killed by SIGKILL (Killed)", "vm")]


def test_return_codes():
    assert by_returncode(3) == "exited with code 3"
    assert by_returncode(-11) == "was killed by SIGSEGV (Segmentation fault)"
    assert by_returncode(-99) == "was killed by signal 99"


def test_parsing_is_linear_in_the_output():
    """A rank that prints megabytes on one line before failing must not freeze the kernel."""
    tic = time.monotonic()
    assert rank_exits("rank: 1 " * 250_000 + "\n" + "host : x\n" * 50_000) == []
    assert time.monotonic() - tic < 1


def test_a_step_ended_by_its_launcher_is_said_cause_first():
    killed = "was killed by SIGKILL (Killed)"
    rows = [
        {"id": i, "rank": i, "pid": 40 + i, "host": "vm", "fate": fate, "report": report}
        for i, fate, report in [(0, killed, 1), (1, "exited with code 3", 0), (2, killed, 1)]
    ]
    assert describe_loss(rows, "srun") == (
        "engine 1 (MPI rank 1, pid 41 on vm) exited with code 3; srun then stopped the others: "
        "engine 0 (MPI rank 0, pid 40 on vm), engine 2 (MPI rank 2, pid 42 on vm) with SIGKILL"
    )
    lost_by_heartbeat = [{"id": 1, "rank": None, "pid": 41, "host": "vm"}]
    assert describe_loss(lost_by_heartbeat) == (
        "engine 1 (pid 41 on vm) stopped answering heartbeats (frozen, or its node is unreachable)"
    )
