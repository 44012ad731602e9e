"""IPython magics that run parallel code in the Slurm allocation a notebook already runs in.

``%load_ext ipcmagic`` (or ``import ipcmagic`` inside IPython) registers ``%ipcluster``.
"""

from __future__ import annotations

import sys
from typing import Any

from .version import __version__

__all__ = [
    "__version__",
    "client",
    "dask_client",
    "load_ipython_extension",
    "unload_ipython_extension",
    "view",
]

_magics = None  # the IPClusterMagics of this kernel, once loaded


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics in ``ipython`` (``%load_ext ipcmagic``)."""
    global _magics
    if _magics is None or _magics.shell is not ipython:
        from .magics import IPClusterMagics

        _magics = IPClusterMagics(shell=ipython)
    ipython.register_magics(_magics)
    if _magics.cluster.client is None:
        from .cluster.px_magics import deactivate_px

        deactivate_px(ipython, None)  # %px before any start says to start a cluster
    if _magics.report_failure not in ipython.events.callbacks["post_run_cell"]:
        ipython.events.register("post_run_cell", _magics.report_failure)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop this kernel's cluster (``%unload_ext ipcmagic``)."""
    if _magics is not None:
        _magics.cluster.stop()
        ipython.events.unregister("post_run_cell", _magics.report_failure)


def client() -> Any:
    """The ``ipyparallel.Client`` of this kernel's running cluster (its ``.cluster`` is the Cluster)."""
    if _magics is None or not _magics.cluster.running:
        raise RuntimeError("No cluster is running; start one with %ipcluster start.")
    _magics.cluster.settle()  # a restart after a failed cell
    return _magics.cluster.client


def view() -> Any:
    """The view ``%px`` runs on: ipyparallel's DirectView of all engines, whose blocking push is
    sent once for the controller to fan out (``client()[:]`` sends a copy per engine)."""
    client()  # says when no cluster runs
    return _magics.cluster.view


def dask_client() -> Any:
    """The ``distributed.Client`` of this kernel's cluster, started with ``%ipcluster start --dask``."""
    if _magics is None or _magics.cluster.dask_client is None:
        raise RuntimeError("No dask cluster is running; start one with %ipcluster start --dask.")
    return _magics.cluster.dask_client


def _register_on_import() -> None:
    """``import ipcmagic`` inside IPython registers the magics, as the predecessor did."""
    if "IPython" not in sys.modules:
        return
    ipython = sys.modules["IPython"].get_ipython()
    if ipython is not None:
        load_ipython_extension(ipython)


_register_on_import()
