"""Start and stop seconds of %ipcluster's launchers and of ipyparallel.Cluster used directly.

Run inside an allocation of at least 16 tasks, e.g. on the test cluster:
    salloc -n 16 srun -n 1 .venv/bin/python benchmarks/startup.py [--repeat 3] [--sizes 1 4 16]
Prints one table of medians (min-max) in seconds, all measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import ipyparallel as ipp

from ipcmagic.cluster import IPCluster
from ipcmagic.slurm import Allocation


def ipcmagic_run(launcher: str, n: int) -> tuple[float, float]:
    cluster = IPCluster()
    allocation = Allocation.from_env()
    extra = "--oversubscribe" if launcher == "mpirun" else ""
    plan = cluster.plan_start(allocation, launcher=launcher, n=n, launcher_args=extra)
    tic = time.perf_counter()
    cluster.start(plan)
    started = time.perf_counter() - tic
    tic = time.perf_counter()
    cluster.stop()
    return started, time.perf_counter() - tic


def ipp_run(engines: str, n: int) -> tuple[float, float]:
    """ipyparallel.Cluster as a user would drive it by hand (its defaults, srun for 'mpi')."""
    cluster = ipp.Cluster(n=n, engines=engines, log_level=50)
    if engines == "mpi":
        cluster.config.MPIEngineSetLauncher.mpi_cmd = ["srun", "--overlap"]
    tic = time.perf_counter()
    client = cluster.start_and_connect_sync()
    started = time.perf_counter() - tic
    client.close()
    tic = time.perf_counter()
    cluster.stop_cluster_sync()
    return started, time.perf_counter() - tic


CASES: dict[str, Callable[[int], tuple[float, float]]] = {
    "%ipcluster srun": lambda n: ipcmagic_run("srun", n),
    "%ipcluster mpirun": lambda n: ipcmagic_run("mpirun", n),
    "%ipcluster local": lambda n: ipcmagic_run("local", n),
    "ipp.Cluster srun (mpi)": lambda n: ipp_run("mpi", n),
    "ipp.Cluster local": lambda n: ipp_run("local", n),
}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    if Allocation.from_env() is None:
        parser.error("run me inside a Slurm allocation (see the module docstring)")
    print(f"{'case':<24} {'N':>3}  {'start s: median (min-max)':<27} {'stop s: median (min-max)'}")
    for n in args.sizes:
        for name, run in CASES.items():
            starts, stops = zip(*(run(n) for _ in range(args.repeat)), strict=True)
            print(f"{name:<24} {n:>3}  {summary(starts):<27} {summary(stops)}", flush=True)


if __name__ == "__main__":
    main()
