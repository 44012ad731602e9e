"""CPU seconds that each process of a one-engine start spends (srun), next to the floor's, and the
lower bound they set on starting N engines with this machine's cores.

    salloc -n 4 srun -n 1 .venv/bin/python benchmarks/cpu.py [--repeat 5] [--sizes 4 16 64]
When engines outnumber cores, start-up time is CPU time: N engines cannot start faster than
(N x engine + controller + kernel) / cores seconds, whatever the launcher does.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import psutil

from ipcmagic.base.slurm import Allocation
from ipcmagic.cluster.ipcluster import IPCluster


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def floor_cpu() -> float:
    """One process that only imports ipyparallel's engine (the floor of startup.py)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import ipyparallel.engine.app"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def start_cpu() -> dict[str, float]:
    """Start one srun engine; CPU seconds of the engine, its nanny, the controller and the kernel
    (this process) until %ipcluster start returned. Nothing runs on the engine meanwhile."""
    cluster = IPCluster(timeout=600)
    plan = cluster.plan_start(Allocation.from_env(), launcher="srun", n=1)
    kernel = time.process_time()
    cluster.start(plan)
    kernel = time.process_time() - kernel
    engine = psutil.Process(cluster.roster[0]["pid"])
    controller = next(
        p for p in psutil.Process().children() if "ipcmagic.controller" in " ".join(p.cmdline())
    )
    row = {
        "engine": cpu_seconds(engine),
        "its nanny": sum(cpu_seconds(p) for p in engine.children()),
        "controller": cpu_seconds(controller),
        "kernel": kernel,
    }
    cluster.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    args = parser.parse_args()
    if Allocation.from_env() is None:
        parser.error("run me inside a Slurm allocation (see the module docstring)")
    rows = [{"floor process": floor_cpu(), **start_cpu()} for _ in range(args.repeat)]
    cores = psutil.cpu_count()
    print(f"{cores} cores; CPU seconds per process of a one-engine start, medians of {args.repeat} (min-max)")
    median = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        median[name] = statistics.median(values)
        print(f"{name:<14} {median[name]:5.2f} ({min(values):.2f}-{max(values):.2f})")
    engine = median["engine"] + median["its nanny"]
    for n in args.sizes:
        bound = (n * engine + median["controller"] + median["kernel"]) / cores
        floor = n * median["floor process"] / cores
        print(f"N={n:<3} start >= {bound:5.2f} s of CPU work on {cores} cores (floor's own: {floor:5.2f} s)")


if __name__ == "__main__":
    main()
