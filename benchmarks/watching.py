"""What watching costs (issue 34): the kernel's time per refresh of ``%ipcluster status --watch``
for engines on its node (psutil, in the kernel) and what one collector task costs a node (CPU
seconds per sample, for engines on other nodes); and the time that naming the other holders adds to
each start and %%torchrun run. Engines idle meanwhile, so the numbers are the watch's own.

    salloc -N 2 --ntasks-per-node=4 srun -N 1 -n 1 .venv/bin/python benchmarks/watching.py  # 2-node lab
Goals: a refresh under 20 ms of kernel time for 8 engines; a collector under 1 % of a core at a
2 s interval; naming holders under 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from ipcmagic.base.holders import holders
from ipcmagic.base.slurm import Allocation
from ipcmagic.cluster.ipcluster import IPCluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=8, help="engines")
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    allocation = Allocation.from_env()
    cluster = IPCluster()
    cluster.start(cluster.plan_start(allocation, n=args.n))
    try:
        table = cluster.watch_usage(interval=0.5)
        refreshes = []
        for _ in range(args.samples):
            tic = time.process_time()
            table.refresh()
            refreshes.append((time.process_time() - tic) * 1000)
            time.sleep(0.5)
        collector = table.sampler.collector
        tasks = _collector_tasks() if collector else []
        per_sample = sum(_cpu(task) for task in tasks) / max(1, len(tasks)) / max(1, args.samples)
        named = []
        for _ in range(5):
            tic = time.perf_counter()
            holders(allocation.job_id if allocation else None, [cluster.cluster.cluster_id])
            named.append((time.perf_counter() - tic) * 1000)
    finally:
        cluster.stop()
    hosts = sorted({row["host"] for row in table.roster.values()})
    refresh = statistics.median(refreshes)
    print(f"{args.n} engines on {', '.join(hosts)}")
    print(
        f"refresh, kernel CPU: median {refresh:.1f} ms (min {min(refreshes):.1f}, max {max(refreshes):.1f})"
    )
    _goal("a refresh under 20 ms of kernel time", refresh < 20)
    if tasks:
        share = per_sample / 2.0 * 100  # of a core, at the default 2 s interval
        print(f"collector: {per_sample * 1000:.1f} ms of CPU per sample, {share:.2f} % of a core at 2 s")
        _goal("a collector under 1 % of a core", share < 1)
    name = statistics.median(named)
    print(f"naming other holders: median {name:.0f} ms (min {min(named):.0f}, max {max(named):.0f})")
    _goal("naming holders under 100 ms", name < 100)


def _collector_tasks() -> list[psutil.Process]:
    """The collector tasks on this host's view: those in this machine's process table (the labs'
    nodes share it), by their command line."""
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "Sampler" in " ".join(p.info["cmdline"]) and p.name() != "srun"
    ]


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return 0.0


def _goal(what: str, met: bool) -> None:
    print(f"  {what}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
