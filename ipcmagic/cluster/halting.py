"""Ending the engines of a parallel cell that are still running: interrupt them, restart the stuck.

One way for both cells that end early: one engine failed while the others ran
(:mod:`ipcmagic.cluster.failfast`), or the cell ran past its ``%%pxtimeout``. SIGINT ends Python code on an
engine (a ``KeyboardInterrupt``; the engine keeps its variables). An engine in C code, typically a
rank waiting in an MPI call for a rank that failed, does not return to Python until that call
does, which it never will: once ``grace`` seconds pass, all engines are restarted, since MPI ranks
are one world and cannot be replaced one by one. The restart is begun here and finished when the
cluster is next used (:meth:`ipcmagic.cluster.ipcluster.IPCluster.settle`), so that the cell fails at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
from typing import Any

from ..base.slurm import step_env
from .losses import describe_engines, names, on_this_node

#: seconds interrupted engines have to stop before they count as stuck
GRACE = 1.0
#: seconds a kill on another node may take (srun starts a step there in well under a second)
KILL_WAIT = 5.0


#: how ipyparallel's client fails the work of an engine that unregistered
LOST = "EngineError"


def running(result: Any) -> list[int]:
    """The ids of the engines whose part of ``result`` has not finished."""
    return [eid for eid, child in zip(result._targets, result._children, strict=True) if not child.done()]


def was_lost(error: Any) -> bool:
    """Whether an engine's reply ``error`` is ipyparallel's word that the engine was lost."""
    return getattr(error, "ename", None) == LOST


#: what a collective says on a rank whose peer's process ended (gloo, NCCL): the cause is the peer
PEER_GONE = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited", re.IGNORECASE)


def lost_a_peer(error: Any) -> bool:
    """Whether an engine's reply ``error`` is a torch.distributed collective's word that a peer of
    the engine ended: the engine failed because another was lost."""
    torch_error = getattr(error, "ename", None) in ("RuntimeError", "DistBackendError", "DistNetworkError")
    return torch_error and bool(PEER_GONE.search(str(getattr(error, "evalue", ""))))


def vanished(result: Any) -> set[int]:
    """The ids of the engines whose part of ``result`` failed because they were lost."""
    return {
        eid
        for eid, child in zip(result._targets, result._children, strict=True)
        if child.done() and was_lost(child.result())
    }


def halt(cluster: Any, result: Any, grace: float = GRACE) -> list[int]:
    """Interrupt the engines still running ``result``; if any still run ``grace`` seconds later,
    begin a restart of all engines. The engines that were stuck (empty: none was restarted)."""
    lost = {row["id"] for row in cluster.lost_engines()}
    alive = [i for i in running(result) if i not in lost and i in cluster.client.ids]
    if alive:  # not waiting for replies: an engine may die meanwhile
        cluster.client.send_signal(signal.SIGINT, targets=alive, block=False)
    pending = [child for child in result._children if not child.done()]
    concurrent.futures.wait(pending, timeout=grace)
    stuck = running(result)
    if stuck:
        cluster.restart(wait=False, kill=True)
    return stuck


def ended_message(
    failed: dict, lost: bool, others: list[dict], stuck: list[int], n: int, grace: float
) -> str | None:
    """The line on the ``others`` that a fail-fast execute ended after engine ``failed`` failed
    (or was ``lost``: :mod:`ipcmagic.cluster.losses` says how); None if there were none."""
    if not others:
        return None
    if lost:
        said = f"ipcmagic: {ids(others)} still ran after engine {failed['id']} was lost"
    else:
        said = f"ipcmagic: {describe_engines([failed])} failed while {ids(others)} still ran"
    if not stuck:
        return f"{said}; {they(others)} interrupted (KeyboardInterrupt) and keep their variables."
    still = [row for row in others if row["id"] in stuck]
    subject = ids(still) if still != others else they(others).split()[0]
    return f"{said}; {subject} {_restarted('in MPI for a failed rank', n, grace)}"


def interrupted_message(stuck: list[int], n: int, grace: float) -> str:
    """The line on a ``%px`` cell whose interrupt left engines ``stuck`` in C code."""
    return f"ipcmagic: {names(stuck)} {_restarted('in MPI or a collective for the others', n, grace)}"


def _restarted(waiting: str, n: int, grace: float) -> str:
    """What became of engines stuck in C code, ranks ``waiting`` for others there."""
    return (
        f"did not stop on SIGINT within {grace:g} s (ranks waiting {waiting} never return), so all {n} "
        "engines are being restarted: their variables are gone."
    )


def they(rows: list[dict]) -> str:
    return "it was" if len(rows) == 1 else "they were"


def ids(rows: list[dict]) -> str:
    """``engine 3`` or ``engines 0, 2, 3``."""
    return names([row["id"] for row in rows])


def kill_engines(rows: list[dict[str, Any]], elsewhere: bool = True) -> None:
    """SIGKILL the engines of ``rows``: on this node at once; on the job's other nodes (with
    ``elsewhere``) by a one-task ``srun --overlap`` step on each node, at the same time."""
    away: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if on_this_node(row):
            with contextlib.suppress(ProcessLookupError):
                os.kill(row["pid"], signal.SIGKILL)
        elif elsewhere and row["step"]:
            away.setdefault((row["step"].split(".")[0], row["host"]), []).append(str(row["pid"]))
    if away:
        with concurrent.futures.ThreadPoolExecutor(len(away)) as pool:
            list(pool.map(lambda each: _kill_on(*each[0], each[1]), away.items()))


def _kill_on(job: str, host: str, pids: list[str]) -> None:
    """SIGKILL ``pids`` on ``host``, in a step of ``job`` there. kill fails for a pid that ended
    meanwhile, and srun waits on an unreachable node, whose processes are cut off with it: nothing is
    left to do then."""
    step = ["--overlap", f"--jobid={job}", f"--nodelist={host}", "-N1", "-n1", "--mpi=none", "--quiet"]
    kill = ["srun", *step, "kill", "-KILL", *pids]
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(kill, env=step_env(os.environ), capture_output=True, timeout=KILL_WAIT)
