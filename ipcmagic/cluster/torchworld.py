"""The engines as one torch.distributed world (``%ipcluster start --torch``), which stays up between
cells: each engine gets the variables a launcher sets for a rank (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the default process
group, NCCL where every engine has a GPU (each its own: ``LOCAL_RANK`` picks among those it sees),
else gloo. Ranks follow the engines' MPI ranks where they have them, else their ids. A restart
forms the world anew; a rank stuck in a collective after another failed is restarted as an MPI rank is
(:mod:`.halting`).

What listens is torch's, as in a ``%%torchrun`` run: rank 0's TCPStore on ``MASTER_PORT`` and, with
gloo, each rank's port for its peers (docs/torchrun.md, "What listens").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

#: what a rank's engine reports before joining: whether torch imports, how many GPUs it sees, and a
#: port free on its host (rank 0's becomes MASTER_PORT)
Probe = tuple[str | None, int, int]


def _order(row: dict[str, Any]) -> int:
    """Where an engine stands in the world: by its MPI rank where it has one, else by its id."""
    return row["id"] if row["rank"] is None else row["rank"]


def world_env(rows: Iterable[dict[str, Any]], port: int) -> dict[int, dict[str, str]]:
    """The variables of each engine (by id) of the world that the engines of ``rows`` make, with
    rank 0's TCPStore on ``port``; on one host, MASTER_ADDR is the loopback address."""
    ordered = sorted(rows, key=_order)
    hosts = [row["host"] for row in ordered]
    master = "127.0.0.1" if len(set(hosts)) == 1 else hosts[0]
    env = {}
    for rank, row in enumerate(ordered):
        here = [other for other in ordered if other["host"] == row["host"]]
        env[row["id"]] = {
            "RANK": str(rank),
            "LOCAL_RANK": str(here.index(row)),
            "WORLD_SIZE": str(len(ordered)),
            "LOCAL_WORLD_SIZE": str(len(here)),
            "MASTER_ADDR": master,
            "MASTER_PORT": str(port),
        }
    return env


def backend_for(probes: dict[int, Probe]) -> str:
    """NCCL where every engine sees a GPU, else gloo; ValueError naming engines without torch."""
    without = sorted(engine for engine, (version, _, _) in probes.items() if version is None)
    if without:
        listed = ", ".join(map(str, without))
        raise ValueError(
            f"--torch needs torch on every engine, but engine{'s' if len(without) > 1 else ''} {listed} "
            "cannot import it; install it in the engines' Python (the kernel's, or the one that "
            "c.*EngineSetLauncher.engine_cmd runs)."
        )
    return "nccl" if all(gpus for _, gpus, _ in probes.values()) else "gloo"


def form_world(client: Any, rows: list[dict[str, Any]], timeout: float) -> str:
    """Make the engines of ``rows`` one world; its backend. Raises what an engine raised while
    joining (ipyparallel's RemoteError), ValueError without torch, TimeoutError past ``timeout``."""
    deadline = time.monotonic() + timeout
    probes = {row["id"]: client[row["id"]].apply_async(_probe) for row in rows}
    probes = {engine: reply.get(max(0.0, deadline - time.monotonic())) for engine, reply in probes.items()}
    backend = backend_for(probes)
    first = min(rows, key=_order)["id"]
    env = world_env(rows, probes[first][2])
    seconds = max(1.0, deadline - time.monotonic())
    joining = [client[engine].apply_async(_join, each, backend, seconds) for engine, each in env.items()]
    for reply in joining:
        reply.get(max(0.0, deadline - time.monotonic()))
    return backend


def describe(backend: str, n: int) -> str:
    """The start's line about the world."""
    return (
        f"torch.distributed: the {n} engines are one {backend} world, ranks in engine order (the default "
        "process group is initialised); %%px cells run collectives and DDP on it."
    )


def _probe() -> Probe:
    """Runs on an engine: torch's version (None without torch), the GPUs it sees, a free port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    try:
        import torch
    except ImportError:
        return None, 0, port
    return torch.__version__, torch.cuda.device_count() if torch.cuda.is_available() else 0, port


def _join(env: dict[str, str], backend: str, seconds: float) -> int:
    """Runs on an engine: set a rank's variables and join the default process group; its rank."""
    import datetime
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(env)
    if backend == "nccl":
        torch.cuda.set_device(int(env["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    return dist.get_rank()
