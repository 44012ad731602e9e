"""GPUs for engines that Slurm does not hand out (mpirun, local): CUDA_VISIBLE_DEVICES by the
engine's place among the engines of its host."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..base.gpus import device_sets


def gpu_sets(rows: list[dict[str, Any]], per_engine: int) -> dict[int, str]:
    """CUDA_VISIBLE_DEVICES for each engine in ``rows`` (``id``, ``host``, ``gpus``): the engines
    of one host, in id order, take ``per_engine`` devices each out of those they see (their
    CUDA_VISIBLE_DEVICES, else 0, 1, ...). ValueError when a host has too few."""
    by_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row["id"]):
        by_host[row["host"]].append(row)
    sets = {}
    for host, engines in by_host.items():
        seen = engines[0]["gpus"].split(",") if engines[0]["gpus"] else None
        for row, devices in zip(engines, device_sets(seen, len(engines), per_engine, host), strict=True):
            sets[row["id"]] = devices
    return sets


def use_gpus(devices: str) -> Any:
    """Runs on an engine, before anything there initialised CUDA: see only ``devices``."""
    import os

    from ipcmagic.cluster.replies import plain

    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    return plain(None)
