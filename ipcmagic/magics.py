"""The ``%ipcluster`` magic: argument parsing, then one call into :mod:`ipcmagic.cluster`."""

from __future__ import annotations

import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import __version__
from .cluster import LAUNCHERS, IPCluster
from .slurm import Allocation


def _positive_seconds(text: str) -> int:
    seconds = int(text)
    if seconds < 1:
        raise ValueError(text)
    return seconds


@magics_class
class IPClusterMagics(Magics):
    """Magics that run an ipyparallel cluster in the Slurm allocation of this kernel."""

    def __init__(self, shell=None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self.cluster = IPCluster(parent=self)

    @magic_arguments()
    @argument("action", nargs="?", choices=("start", "stop", "status"), help="What to do.")
    @argument(
        "-n",
        "--engines",
        type=int,
        dest="n",
        help="Number of engines (default: the allocation's task count, else the CPU count).",
    )
    @argument(
        "--launcher",
        choices=LAUNCHERS,
        help="srun (a step in this allocation), mpirun, local; auto (default): srun in an "
        "allocation, else local.",
    )
    @argument("-c", "--cpus-per-engine", type=int, help="CPUs per engine (srun -c).")
    @argument("--mpi", help="srun --mpi plugin, e.g. pmix or pmi2 (default: the site's MpiDefault).")
    @argument(
        "--timeout",
        type=_positive_seconds,
        help="Seconds to wait for all engines; then everything is stopped and the cell fails.",
    )
    @argument(
        "--launcher-args",
        default="",
        help='Extra srun/mpirun (or ipengine) arguments, quoted: "--exclusive".',
    )
    @argument("--version", action="store_true", help="Print ipcmagic's version.")
    @line_magic
    def ipcluster(self, line: str = "") -> None:
        """Start, stop or show the ipyparallel cluster of this kernel.

        ``%ipcluster start -n 4`` starts a controller and 4 engines: an ``srun --overlap`` job step
        inside the current Slurm allocation (engine id == MPI rank), ``mpirun``, or local processes.
        It returns once all engines are registered; then ``%px``, ``%%px`` and ``%autopx`` run on
        them, and ``ipcmagic.client()`` gives the ipyparallel Client. ``%ipcluster stop`` stops
        everything. Each kernel has its own cluster; it is stopped when the kernel exits.
        """
        args = parse_argstring(self.ipcluster, line)
        if args.version:
            print(f"ipcmagic {__version__}")
            return
        if args.action is None:
            raise UsageError("Say what to do: %ipcluster start|stop|status (see %ipcluster?).")
        getattr(self, f"_{args.action}")(args)

    def _start(self, args) -> None:
        plan = self.cluster.plan_start(
            Allocation.from_env(),
            launcher=args.launcher,
            n=args.n,
            cpus_per_engine=args.cpus_per_engine,
            mpi=args.mpi,
            launcher_args=args.launcher_args,
        )
        tic = time.perf_counter()
        self.cluster.start(plan, timeout=args.timeout)
        print(
            f"{plan.n} {plan.launcher} engines ready in {time.perf_counter() - tic:.1f} s; "
            "%%px runs cells on them."
        )

    def _stop(self, args) -> None:
        if not self.cluster.running:
            print("No cluster is running.")
            return
        self.cluster.stop()
        print("Cluster stopped.")

    def _status(self, args) -> None:
        if not self.cluster.running:
            print("No cluster is running.")
            return
        plan, cluster = self.cluster.plan, self.cluster.cluster
        print(
            f"cluster {cluster.cluster_id}: {plan.launcher}, {plan.n} engines, "
            f"up {time.monotonic() - self.cluster.started_at:.0f} s"
        )
        print(f"{'engine':>6} {'rank':>5}  {'host':<20} {'pid':>8}")
        for row in self.cluster.engines():
            rank = "-" if row["rank"] is None else row["rank"]
            print(f"{row['id']:>6} {rank:>5}  {row['host']:<20} {row['pid']:>8}")
