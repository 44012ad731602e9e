"""``%%pxtimeout SECONDS``: a parallel cell that cannot run longer than SECONDS.

The cell runs on the engines as ``%%px`` does (output streams live; one engine's error or loss
fails it at once, :mod:`ipcmagic.cluster.failfast`). Past ``SECONDS`` the engines are ended as a failed
cell's others are (:mod:`ipcmagic.cluster.halting`): SIGINT, a ``KeyboardInterrupt`` in Python code; those
that still do not finish within the grace time, typically ranks deadlocked in MPI, are restarted
with the whole cluster, because their MPI world is broken. The cell then fails, saying which.
"""

from __future__ import annotations

from .halting import GRACE, halt
from .ipcluster import IPCluster


class ParallelTimeout(RuntimeError):
    """A parallel cell ran past its timeout; the message says what was done about it."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def run_bounded(cluster: IPCluster, cell: str, seconds: float, grace: float = GRACE) -> None:
    """Run ``cell`` on every engine of ``cluster`` for at most ``seconds``."""
    result = cluster.view.execute(cell, block=False, silent=False)
    with result.stream_output():
        finished = result.wait(seconds)
    if finished:
        result.display_outputs()
        result.get()  # a failed engine raises ipyparallel's CompositeError, as %%px does
        return
    if halt(cluster, result, grace):
        raise ParallelTimeout(restarted_message(seconds, cluster.plan.n, grace))
    raise ParallelTimeout(
        f"The cell ran past its timeout of {seconds:g} s; the engines were interrupted "
        "(KeyboardInterrupt) and keep their variables."
    )


def restarted_message(seconds: float, n: int, grace: float) -> str:
    """What a bounded cell says after restarting the engines past its timeout."""
    return (
        f"The cell ran past its timeout of {seconds:g} s and some engines did not stop on SIGINT within "
        f"{grace:g} s (for example ranks deadlocked in an MPI call); all {n} engines are being "
        "restarted, so their variables are gone."
    )
