"""The GPUs a process may use, and how ranks of one host share them out."""

from __future__ import annotations

import glob
import os


def visible_devices() -> list[str]:
    """The devices this process may use: those CUDA_VISIBLE_DEVICES lists, else this node's
    NVIDIA devices (``0, 1, ...``)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device for device in listed.split(",") if device]
    return [str(i) for i in range(len(glob.glob("/dev/nvidia[0-9]*")))]


def device_sets(seen: list[str] | None, ranks: int, per_rank: int, host: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each of ``ranks`` ranks of one host, ``per_rank`` devices each out
    of those they see (``seen``; None: ``0, 1, ...``). ValueError when the host has too few."""
    if seen is not None and ranks * per_rank > len(seen):
        raise ValueError(
            f"{ranks} engines on {host} need {ranks * per_rank} GPUs, but CUDA_VISIBLE_DEVICES there "
            f"lists {len(seen)} ({','.join(seen)}); use fewer engines or --gpus-per-engine."
        )
    devices = seen if seen is not None else [str(i) for i in range(ranks * per_rank)]
    return [",".join(devices[rank * per_rank : (rank + 1) * per_rank]) for rank in range(ranks)]


def gpu_processes() -> dict[int, list[tuple[int, int]]]:
    """The processes on this node's GPUs, from NVML (nvidia-ml-py): pid -> [(GPU index, bytes of
    its memory)]; empty where NVML is not there."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, no driver: nothing to say
        return {}
    found: dict[int, list[tuple[int, int]]] = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        device = pynvml.nvmlDeviceGetHandleByIndex(index)
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(device):
            found.setdefault(process.pid, []).append((index, process.usedGpuMemory or 0))
    return found
