"""What each engine uses, live: CPU %, resident memory (with its children's), and GPU utilisation
and memory where NVML is there (nvidia-ml-py). Sampled from outside the engines, so a busy engine
shows too and costs nothing when nobody watches: in the kernel for engines on its node, else by
this file run as ``python -c`` in one ``srun --overlap`` task per node, printing a JSON line per
sample until its stdin closes. Standard library, psutil and pynvml only (it runs without ipcmagic)."""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from typing import Any

import psutil

#: what a sample says of a process it cannot see (gone, another user's)
GONE: dict[str, Any] = {"cpu": None, "rss": None, "gpu": None, "gpu_memory": None}


class Sampler:
    """Samples the processes ``pids`` of this host; CPU % over the time since the last sample."""

    def __init__(self, pids: list[int]) -> None:
        self.processes: dict[int, psutil.Process | None] = {}
        for pid in pids:
            try:
                self.processes[pid] = psutil.Process(pid)
                self.processes[pid].cpu_percent()
            except psutil.Error:
                self.processes[pid] = None
        self.nvml = _nvml()
        self.gpu_seen = int(time.time() * 1e6)

    def sample(self) -> dict[int, dict[str, Any]]:
        gpus = self._gpus()
        return {pid: self._usage(process, gpus) for pid, process in self.processes.items()}

    def _usage(self, process: psutil.Process | None, gpus: dict[int, tuple[int, int]]) -> dict[str, Any]:
        try:
            family = [process, *process.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in family)
            cpu = process.cpu_percent()
        except (psutil.Error, AttributeError):
            return GONE
        used = [gpus[p.pid] for p in family if p.pid in gpus]
        gpu = max((u for u, _ in used), default=0) if self.nvml else None
        memory = sum(m for _, m in used) if self.nvml else None
        return {"cpu": cpu, "rss": rss, "gpu": gpu, "gpu_memory": memory}

    def _gpus(self) -> dict[int, tuple[int, int]]:
        """GPU utilisation % and memory by pid, from NVML (empty without it)."""
        if not self.nvml:
            return {}
        nvml, found, since = self.nvml, {}, self.gpu_seen
        self.gpu_seen = int(time.time() * 1e6)
        for i in range(nvml.nvmlDeviceGetCount()):
            device = nvml.nvmlDeviceGetHandleByIndex(i)
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(device):
                found[p.pid] = (0, p.usedGpuMemory or 0)
            try:
                for p in nvml.nvmlDeviceGetProcessUtilization(device, since):
                    found[p.pid] = (p.smUtil, found.get(p.pid, (0, 0))[1])
            except nvml.NVMLError:  # no samples since then
                pass
        return found


def _nvml() -> Any:
    """pynvml, initialised, where this node has NVIDIA's driver and nvidia-ml-py; else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def main() -> None:
    """``python -c <this file> INTERVAL HOST:PID...``: a JSON line per INTERVAL seconds with the
    usage of the PIDs of this host, until stdin closes (the kernel stopped watching, or died)."""
    interval, host = float(sys.argv[1]), socket.gethostname()
    engines = [engine.rpartition(":") for engine in sys.argv[2:]]
    sampler = Sampler([int(pid) for on, _, pid in engines if on == host])
    while not select.select([sys.stdin], [], [], interval)[0] or sys.stdin.readline():
        line = {"host": host, "nvml": bool(sampler.nvml), "usage": sampler.sample()}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
