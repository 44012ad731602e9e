"""Soak: many start/stop cycles in one process must leak no process, fd, file, step or memory.

    salloc -n 16 srun -n 1 .venv/bin/python benchmarks/soak.py [--cycles 20] [-n 16] [--launcher srun]
Prints the kernel-side counts before and after, and exits 1 on any leak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ipcmagic.cluster import IPCluster
from ipcmagic.slurm import Allocation


def snapshot() -> dict[str, float]:
    me = psutil.Process()
    return {
        "children": len(me.children(recursive=True)),
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "temp dirs": len(list(Path(tempfile.gettempdir()).glob("ipcmagic-*"))),
        "rss MiB": round(me.memory_info().rss / 2**20, 1),
    }


def soak(cycles: int, n: int, launcher: str) -> tuple[dict, dict, list[float]]:
    """Run the cycles; return the counts after the first cycle, after the last, and the start times."""
    cluster = IPCluster(timeout=600)  # 64 engines on 2 cores take about a minute
    plan = cluster.plan_start(Allocation.from_env(), launcher=launcher, n=n)
    first: dict = {}
    starts = []
    for i in range(cycles):
        tic = time.perf_counter()
        cluster.start(plan)
        starts.append(time.perf_counter() - tic)
        assert len(cluster.client.ids) == n
        cluster.stop()
        if i == 0:
            first = snapshot()  # after one cycle: imports, thread pools and caches exist
    return first, snapshot(), starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--launcher", default="auto")
    args = parser.parse_args()
    before = snapshot()
    first, last, starts = soak(args.cycles, args.n, args.launcher)
    print(
        f"{args.cycles} cycles of {args.n} engines ({args.launcher}), {os.cpu_count()} cores; "
        f"start s: first {starts[0]:.2f}, median {statistics.median(starts):.2f}, max {max(starts):.2f}"
    )
    print(f"{'':<10} {'before':>8} {'cycle 1':>8} {'last':>8}")
    for key in before:
        print(f"{key:<10} {before[key]:>8} {first[key]:>8} {last[key]:>8}")
    leaks = [k for k in ("children", "fds", "threads", "temp dirs") if last[k] > first[k]]
    if leaks or last["children"] or last["temp dirs"]:
        print("LEAK:", ", ".join(leaks) or "processes or directories left")
        sys.exit(1)


if __name__ == "__main__":
    main()
