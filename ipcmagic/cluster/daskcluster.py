"""The engines as a dask.distributed cluster: ipyparallel's ``become_dask``, with the scheduler
in the controller, listening where the controller does.

Every connection is mutual TLS with a certificate made for this cluster alone
(``distributed.security.Security.temporary()``, in memory): the scheduler, the workers and the
kernel's Client hold it, and anyone else — another user on the node or the network — is refused
before a message is read. The scheduler gets it through the controller's environment (dask reads
its configuration from ``DASK_*`` variables; only the user can read a process's environment), the
workers as an argument, the kernel's Client from dask's configuration while it is made.

dask's files (spilled data, locks, and a directory dask puts on ``sys.path``) go into private
directories, never dask's default ``/tmp/dask-scratch-space``, which belongs to whoever used dask on
the node first (another user can then choose where dask's fallback goes): the scheduler's into the
cluster's private directory, each worker's into one its engine makes on its node
(:class:`ipcmagic.engine.Engine` ``private_scratch``). Both go with the cluster.
"""

from __future__ import annotations

from typing import Any

#: where workers serve their HTTP routes (metrics, health): nobody needs them, so never outside
#: their node (dask's default is every interface)
WORKER_HTTP = "127.0.0.1:0"


def cluster_security() -> Any:
    """A new certificate and key for one cluster's scheduler, workers and Client."""
    from distributed.security import Security

    return Security.temporary()


def tls_config(security: Any, role: str) -> dict[str, Any]:
    """dask's configuration for TLS with ``security``'s certificate, as ``role`` (scheduler, client)."""
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": security.tls_ca_file,
        f"distributed.comm.tls.{role}.cert": getattr(security, f"tls_{role}_cert"),
        f"distributed.comm.tls.{role}.key": getattr(security, f"tls_{role}_key"),
    }


def scheduler_env(security: Any, directory: str) -> dict[str, str]:
    """The controller's environment that makes the scheduler ipyparallel starts there speak TLS
    with ``security``'s certificate only, and keep its files in the private ``directory``: as
    dask's ``DASK_*`` variables."""
    config = {**tls_config(security, "scheduler"), "temporary-directory": directory}
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(v) for key, v in config.items()}


def worker_args(host: str, threads: int, security: Any) -> dict[str, Any]:
    """How each engine's worker starts: ``threads`` threads, TLS with ``security``, listening on
    loopback when the scheduler does (all on this node), else on every interface (TLS guards it)."""
    listen = {"host": host} if host == "127.0.0.1" else {}
    return {"nthreads": threads, "security": security, "dashboard_address": WORKER_HTTP, **listen}


def start_dask(client: Any, host: str, threads: int, timeout: float, security: Any) -> Any:
    """Start a scheduler in the controller and a worker in every engine; return a connected
    ``distributed.Client`` once all workers are there. The dashboard gets a free port."""
    import dask

    with dask.config.set(
        tls_config(security, "client")
    ):  # for the Client become_dask makes, not for the kernel's others
        dask_client = client.become_dask(
            scheduler_args={"host": host, "protocol": "tls", "dashboard_address": f"{host}:0"},
            **worker_args(host, threads, security),
        )
    dask_client.wait_for_workers(len(client.ids), timeout=timeout)
    return dask_client


def add_workers(
    client: Any, dask_client: Any, host: str, threads: int, timeout: float, security: Any
) -> None:
    """Make every engine (e.g. after a restart) a worker of the running scheduler."""
    from ipyparallel.util import become_dask_worker

    args = worker_args(host, threads, security)
    client[:].apply_sync(become_dask_worker, address=dask_client.scheduler.address, **args)
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
