"""The engines as a dask.distributed cluster: ipyparallel's ``become_dask``, with the scheduler
in the controller, listening where the controller does."""

from __future__ import annotations

from typing import Any


def start_dask(client: Any, host: str, threads: int, timeout: float) -> Any:
    """Start a scheduler in the controller and a worker in every engine; return a connected
    ``distributed.Client`` once all workers are there. The dashboard gets a free port."""
    dask_client = client.become_dask(
        scheduler_args={"host": host, "dashboard_address": f"{host}:0"}, nthreads=threads
    )
    dask_client.wait_for_workers(len(client.ids), timeout=timeout)
    return dask_client


def add_workers(client: Any, dask_client: Any, threads: int, timeout: float) -> None:
    """Make every engine (e.g. after a restart) a worker of the running scheduler."""
    from ipyparallel.util import become_dask_worker

    client[:].apply_sync(become_dask_worker, address=dask_client.scheduler.address, nthreads=threads)
    dask_client.wait_for_workers(len(client.ids), timeout=timeout)


def describe(dask_client: Any) -> str:
    """Where the scheduler and its dashboard are: the link follows dask's
    ``distributed.dashboard.link`` template (e.g. one for jupyter-server-proxy)."""
    services = dask_client.scheduler_info()["services"]
    dashboard = dask_client.dashboard_link if "dashboard" in services else "none (pip install bokeh)"
    return (
        f"dask.distributed: {len(dask_client.nthreads())} workers, scheduler "
        f"{dask_client.scheduler.address}, dashboard {dashboard}; "
        "ipcmagic.dask_client() is a Client connected to it."
    )
