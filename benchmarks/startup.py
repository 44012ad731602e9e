"""Start and stop seconds of %ipcluster's launchers, next to ipyparallel.Cluster used directly and
to the floor: N engine processes that only import ipyparallel's engine, as one srun step.

Run inside an allocation with a task per engine, e.g. on the test cluster:
    salloc -n 16 srun -n 1 .venv/bin/python benchmarks/startup.py [--repeat 5] [--sizes 1 4 16]
    salloc -n 64 srun -n 1 .venv/bin/python benchmarks/startup.py --sizes 1 2 4 8 16 32 64 \
        --cases floor "%ipcluster srun"          # the scaling table (SLURMLAB_CPUS=64 dev/slurmlab start)
Prints one row per case and size, all measured in the same run: medians (min-max) in seconds, the
kernel's RSS with the cluster up, and for %ipcluster srun the goals of issue 8 against the floor.
The "%ipcluster srun restart" row's start column is `%ipcluster restart` of a running cluster.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import ipyparallel as ipp
import psutil

from ipcmagic.base.slurm import Allocation
from ipcmagic.cluster.ipcluster import IPCluster

Run = tuple[float, float, float]  # start s, stop s, kernel RSS MiB with the cluster up


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def floor_run(n: int) -> Run:
    """What no launcher can beat: N engine processes importing ipyparallel's engine, one srun step."""
    tic = time.perf_counter()
    subprocess.run(
        ["srun", "--overlap", "-n", str(n), sys.executable, "-c", "import ipyparallel.engine.app"], check=True
    )
    return time.perf_counter() - tic, 0.0, rss_mib()


class PacedIPCluster(IPCluster):
    """ipcmagic with ipyparallel's registration pacing (rank x 20 ms from rank 100) and its 5 s
    wait for a registration reply, as before issue 16."""

    def _engine_args(self, timeout: float) -> list[str]:
        ours = ("--IPEngine.mpi_registration_delay", "--IPEngine.timeout")
        args = [arg for arg in super()._engine_args(timeout) if not arg.startswith(ours)]
        return [*args, "--IPEngine.mpi_registration_delay=0.02", "--IPEngine.timeout=5"]


def ipcmagic_run(launcher: str, n: int, kind: type[IPCluster] = IPCluster) -> Run:
    cluster = kind(timeout=600)  # 64 engines on 2 cores take about a minute
    extra = "--oversubscribe" if launcher == "mpirun" else ""
    plan = cluster.plan_start(Allocation.from_env(), launcher=launcher, n=n, launcher_args=extra)
    tic = time.perf_counter()
    cluster.start(plan)
    started, rss = time.perf_counter() - tic, rss_mib()
    tic = time.perf_counter()
    cluster.stop()
    return started, time.perf_counter() - tic, rss


def restart_run(n: int) -> Run:
    """%ipcluster restart: stop the engines, let the controller forget them, start them anew."""
    cluster = IPCluster(timeout=600)
    cluster.start(cluster.plan_start(Allocation.from_env(), launcher="srun", n=n))
    tic = time.perf_counter()
    cluster.restart()
    restarted, rss = time.perf_counter() - tic, rss_mib()
    cluster.stop()
    return restarted, 0.0, rss


def ipp_run(engines: str, n: int) -> Run:
    """ipyparallel.Cluster as a user would drive it by hand (its defaults, srun for 'mpi')."""
    cluster = ipp.Cluster(n=n, engines=engines, log_level=50)
    if engines == "mpi":
        cluster.config.MPIEngineSetLauncher.mpi_cmd = ["srun", "--overlap"]
    tic = time.perf_counter()
    client = cluster.start_and_connect_sync()
    started, rss = time.perf_counter() - tic, rss_mib()
    client.close()
    tic = time.perf_counter()
    cluster.stop_cluster_sync()
    return started, time.perf_counter() - tic, rss


CASES: dict[str, Callable[[int], Run]] = {
    "floor": floor_run,
    "%ipcluster srun": lambda n: ipcmagic_run("srun", n),
    "%ipcluster srun restart": restart_run,
    "%ipcluster srun paced": lambda n: ipcmagic_run("srun", n, PacedIPCluster),
    "ipp.Cluster srun (mpi)": lambda n: ipp_run("mpi", n),
    "%ipcluster mpirun": lambda n: ipcmagic_run("mpirun", n),
    "%ipcluster local": lambda n: ipcmagic_run("local", n),
    "ipp.Cluster local": lambda n: ipp_run("local", n),
}
#: issue 8's goals: start limits at N and seconds over the floor there, ratio to the floor at 64, stop at 16
START_LIMITS = {4: 1.5, 16: 4.0}
START_OVER_FLOOR = 1.0
FLOOR_RATIO_64 = 2.0
#: stop limits at N (issue 8 at 16, issue 16 at 64 and 256); issue 16: 256 engines start within
#: this ratio to the floor
STOP_LIMITS = {16: 0.5, 64: 0.5, 256: 1.0}
FLOOR_RATIO_256 = 1.3


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goals(n: int, medians: dict[str, tuple[float, float]]) -> str:
    """Every goal of issues 8 and 16 that applies at N, against the floor measured in the same run."""
    start, stop = medians["%ipcluster srun"]
    floor = medians["floor"][0] if "floor" in medians else None
    notes = []
    if n in START_LIMITS:
        limit = START_LIMITS[n]
        impossible = f", impossible here: the floor alone is {floor:.2f} s" if floor and floor > limit else ""
        notes.append(f"start {start:.2f} s <= {limit} s: {verdict(start <= limit)}{impossible}")
    if floor:
        over = f", <= +1 s: {verdict(start <= floor + START_OVER_FLOOR)}" if n in START_LIMITS else ""
        notes.append(f"start {start - floor:+.2f} s over the floor ({start / floor:.1f}x){over}")
        if n == 64:
            notes.append(f"<= {FLOOR_RATIO_64}x the floor: {verdict(start <= FLOOR_RATIO_64 * floor)}")
        if n == 256:
            notes.append(f"<= {FLOOR_RATIO_256}x the floor: {verdict(start <= FLOOR_RATIO_256 * floor)}")
    if "%ipcluster srun paced" in medians:
        paced = medians["%ipcluster srun paced"][0]
        notes.append(f"ipyparallel's pacing: {paced:.2f} s ({paced / start:.2f}x)")
    if "ipp.Cluster srun (mpi)" in medians:
        notes.append(f"{medians['ipp.Cluster srun (mpi)'][0] / start:.1f}x faster than ipp.Cluster")
    if n in STOP_LIMITS:
        notes.append(f"stop {stop:.2f} s <= {STOP_LIMITS[n]} s: {verdict(stop <= STOP_LIMITS[n])}")
    return "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    if Allocation.from_env() is None:
        parser.error("run me inside a Slurm allocation (see the module docstring)")
    print(f"{psutil.cpu_count()} cores; medians of {args.repeat} runs (min-max)")
    print(f"{'case':<24} {'N':>3}  {'start s':<19} {'stop s':<19} {'kernel RSS MiB':>14}")
    for n in args.sizes:
        medians = {}
        for name in args.cases:
            starts, stops, rss = zip(*(CASES[name](n) for _ in range(args.repeat)), strict=True)
            medians[name] = statistics.median(starts), statistics.median(stops)
            stop = summary(stops) if any(stops) else "-"
            print(f"{name:<24} {n:>3}  {summary(starts):<19} {stop:<19} {max(rss):>14.1f}", flush=True)
        if "%ipcluster srun" in medians:
            print(f"{'':<24} {n:>3}  goals: {goals(n, medians)}", flush=True)


if __name__ == "__main__":
    main()
