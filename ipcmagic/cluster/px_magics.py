"""``%px`` and its friends while no cluster runs: before a start, and after a stop."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class


@magics_class
class NoClusterMagics(Magics):
    """``%px``, ``%%px``, ``%autopx``, ``%pxresult`` and ``%pxconfig`` while this kernel's cluster
    is not running: they say so (ipyparallel's would use the stopped cluster's closed client)."""

    @staticmethod
    def _no_cluster() -> None:
        raise UsageError("No cluster is running; start one with %ipcluster start.")

    @line_cell_magic
    def px(self, line: str = "", cell: str | None = None) -> None:
        self._no_cluster()

    @line_magic
    def autopx(self, line: str = "") -> None:
        self._no_cluster()

    @line_magic
    def pxresult(self, line: str = "") -> None:
        self._no_cluster()

    @line_magic
    def pxconfig(self, line: str = "") -> None:
        self._no_cluster()


def deactivate_px(shell: Any, client: Any) -> None:
    """After a stop: ``%px`` and friends that ran on ``client``'s engines say no cluster runs; those
    of a view the user activated on another client stay.

    One NoClusterMagics serves every stop (IPython keeps every Magics object ever made).
    """
    px = shell.magics_manager.magics["line"].get("px")
    view = getattr(getattr(px, "__self__", None), "view", None)
    if px is None or getattr(view, "client", None) is client:
        made = [c for c in shell.configurables if isinstance(c, NoClusterMagics)]
        shell.register_magics(made[0] if made else NoClusterMagics(shell))
    if client is not None:
        forget_px_magics(shell, client)


def forget_px_magics(shell: Any, client: Any) -> None:
    """Drop ipyparallel's ``%px`` magics of ``client``'s views from ``shell.configurables``, where
    IPython keeps every Magics object ever made: they hold the client, its cluster and their
    sockets, and a kernel would grow with each start and stop."""
    from ipyparallel.client.magics import ParallelMagics

    shell.configurables[:] = [
        c for c in shell.configurables if not (isinstance(c, ParallelMagics) and c.view.client is client)
    ]
