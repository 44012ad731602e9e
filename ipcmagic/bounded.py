"""``%%pxtimeout SECONDS``: a parallel cell that cannot freeze the notebook.

One rank that fails while the others wait for it in an MPI call (ipyparallel#435) would keep a
``%%px`` cell waiting forever. Here the cell runs on the engines like ``%%px`` (output streams
live), and when ``SECONDS`` pass the engines get SIGINT (a ``KeyboardInterrupt`` in Python code);
engines that still do not finish within the grace time — typically ranks blocked in MPI, which
only returns to Python when its peers answer — are restarted, because their MPI world is broken.
Either way the cell fails, saying which, and the cluster is usable afterwards.
"""

from __future__ import annotations

import signal

from .cluster import IPCluster
from .losses import EnginesLost, describe_loss


class ParallelTimeout(RuntimeError):
    """A parallel cell ran past its timeout; the message says what was done about it."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def run_bounded(cluster: IPCluster, cell: str, seconds: float, grace: float = 3.0) -> None:
    """Run ``cell`` on every engine of ``cluster`` for at most ``seconds``."""
    result = cluster.view.execute(cell, block=False, silent=False)
    with result.stream_output():
        finished = result.wait(seconds)
    lost = cluster.lost_engines()
    if finished and not lost:
        result.display_outputs()
        result.get()  # a failed engine raises ipyparallel's CompositeError, as %%px does
        return
    if finished:  # engines ended before the timeout: the cluster is made whole again
        cluster.restart()
        raise EnginesLost(f"{describe_loss(lost, cluster.step)}; {restarted(cluster.plan.n)}")
    alive = [i for i in cluster.client.ids if i not in {row["id"] for row in lost}]
    if alive:  # not waiting for replies: an engine may die meanwhile
        cluster.client.send_signal(signal.SIGINT, targets=alive, block=False)
    if not lost and result.wait(grace):
        raise ParallelTimeout(
            f"The cell ran past its timeout of {seconds:g} s; the engines were interrupted "
            "(KeyboardInterrupt) and keep their variables."
        )
    lost = lost or cluster.lost_engines()
    cluster.restart()
    raise ParallelTimeout(restarted_message(seconds, cluster.plan.n, lost, grace, cluster.step))


def restarted_message(seconds: float, n: int, lost: list[dict], grace: float, step: str | None = None) -> str:
    """What a bounded cell says after restarting the engines past its timeout: how engines ended,
    or that some were stuck."""
    why = (
        describe_loss(lost, step)
        if lost
        else f"some engines did not stop on SIGINT within {grace:g} s (for example ranks waiting in an "
        "MPI call for a rank that failed)"
    )
    return f"The cell ran past its timeout of {seconds:g} s and {why}; {restarted(n)}"


def restarted(n: int) -> str:
    return f"all {n} engines were restarted, so their variables are gone."
