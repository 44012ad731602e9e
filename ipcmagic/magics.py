"""The ``%ipcluster`` magic: argument parsing, then one call into :mod:`ipcmagic.cluster`."""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from . import plain_client
from .base.slurm import Allocation
from .cluster.bounded import run_bounded
from .cluster.ipcluster import IPCluster
from .cluster.livetable import INTERVAL as LIVE_INTERVAL
from .cluster.losses import EnginesLost, describe_loss, names
from .cluster.plan import LAUNCHERS
from .cluster.torchworld import describe as describe_world
from .cluster.watch import watch
from .torchrun import LAUNCHERS as TORCHRUN_LAUNCHERS
from .torchrun import Torchrun
from .version import __version__


def _positive_seconds(text: str) -> int:
    seconds = int(text)
    if seconds < 1:
        raise ValueError(text)
    return seconds


def _parse(magic, line: str):
    """IPython's parse_argstring, with the line split into words as a shell splits it, and the
    quotes then taken off every value as a shell would. IPython's split keeps them (``"a b"`` would
    reach a script as ``"a b"``) and fails on quotes inside a word (``--x="y z"``); the quotes stay
    on while argparse reads the words, so that ``--launcher-args "-x -y"`` is a value, not options."""
    try:
        args = magic.parser.parse_args(_shell_words(line))
        for name, value in vars(args).items():
            if isinstance(value, str):
                setattr(args, name, _unquote(value))
            elif isinstance(value, list):
                setattr(args, name, [_unquote(word) for word in value])
        return args
    except ValueError as e:
        raise UsageError(f"Cannot parse {line!r}: {e}; check the quotes.") from None


def _shell_words(line: str) -> list[str]:
    """``line`` split at blanks outside quotes, each word as written (quotes and backslashes kept);
    a word that begins with ``#`` starts a comment, as in a shell (IPython passes it on)."""
    words, word, quote, escaped = [], "", "", False
    for char in line:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            if word:
                words.append(word)
            word = ""
            continue
        elif char == "#" and not word:
            break
        word += char
    if quote:
        raise ValueError("No closing quotation")
    return [*words, word] if word else words


def _names(text: str, option: str) -> list[str]:
    """``a,b`` as ``["a", "b"]``; UsageError for a word that is no Python name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if not name.isidentifier()]
    if wrong:
        raise UsageError(f"{option} {wrong[0]!r} is not a variable name; give NAME[,NAME...].")
    return names


def _unquote(word: str) -> str:
    return "".join(shlex.split(word))


def _count(text: str) -> int | str:
    """-n: a number, or ``gpu`` (one per GPU)."""
    if text.lower() == "gpu":
        return "gpu"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number or gpu, not {text!r}") from None


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return port


@magics_class
class IPClusterMagics(Magics):
    """Magics that run an ipyparallel cluster in the Slurm allocation of this kernel."""

    def __init__(self, shell=None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self.cluster = IPCluster(parent=self)
        self.torchrun_defaults = Torchrun(parent=self)

    def report_failure(self, result) -> None:
        """After a cell, once its error was shown: what a fail-fast execute did to the engines
        still running (:mod:`ipcmagic.cluster.failfast`), or an interrupt to those stuck, which
        engines ended and how (ipyparallel only says "N errors"), and what becomes of them
        (``c.IPCluster.restart_lost_engines``)."""
        if not self.cluster.running:
            return
        ended, self.cluster.ended = self.cluster.ended, None
        ended = ended or self.cluster.after_interrupt()
        if ended:
            print(ended, file=sys.stderr)
        if result.error_in_exec is not None:
            self._report_lost(result.error_in_exec)

    def _report_lost(self, error: BaseException) -> None:
        lost = [row for row in self.cluster.lost_engines() if row["id"] not in self.cluster.told]
        if not lost:  # or said after an earlier cell
            return
        self.cluster.told.update(row["id"] for row in lost)
        then, acted = self.cluster.after_loss()
        if not isinstance(error, EnginesLost):  # which says how they ended
            print(f"ipcmagic: {describe_loss(lost, self.cluster.step)}. {then}", file=sys.stderr)
        elif acted or self.cluster.restart_lost_engines:  # the error left it to this line
            print(f"ipcmagic: {then}", file=sys.stderr)

    @magic_arguments()
    @argument("action", nargs="?", choices=("start", "stop", "status", "restart"), help="What to do.")
    @argument(
        "-n",
        "--engines",
        type=_count,
        dest="n",
        help="Number of engines, or gpu: one per GPU of the job, each with its own GPU and share of "
        "its node's CPUs. Default: the job's task count; in a whole-node job without one, one per "
        "GPU, else one per CPU; outside Slurm, one per CPU (docs: Engines and ranks by default).",
    )
    @argument(
        "--launcher",
        choices=LAUNCHERS,
        help="srun (a step in this allocation), mpirun, local; auto (default): srun in an "
        "allocation, else local.",
    )
    @argument(
        "-c",
        "--cpus-per-engine",
        type=int,
        help="CPUs per engine: srun -c; mpirun (Open MPI) binds each engine to that many cores.",
    )
    @argument("--cpu-bind", help="srun --cpu-bind, e.g. cores (default: the site's).")
    @argument(
        "--gpus-per-engine",
        type=int,
        help="GPUs per engine: srun --gpus-per-task; mpirun, local: CUDA_VISIBLE_DEVICES by the "
        "engine's place on its host.",
    )
    @argument(
        "--dask",
        action="store_true",
        help="Make the engines a dask.distributed cluster; ipcmagic.dask_client() connects to it.",
    )
    @argument(
        "--torch",
        action="store_true",
        help="Make the engines one torch.distributed world (RANK, WORLD_SIZE, MASTER_ADDR, ... set, the "
        "default process group initialised: NCCL where each engine has a GPU, else gloo), which stays "
        "up between cells; restart forms it anew.",
    )
    @argument(
        "-m",
        "--mpi",
        nargs="?",
        const="",
        help="srun --mpi plugin, e.g. pmix or pmi2 (default: the site's MpiDefault; a bare --mpi, as "
        "ipcmagic 1.x wrote it, means that default).",
    )
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
    @argument(
        "--lost",
        action="store_true",
        help="restart: only the lost engines (local engines; MPI ranks are one world: all restart).",
    )
    @argument(
        "--watch",
        action="store_true",
        help="status: each engine's CPU %%, memory and GPU use, refreshed every 2 s until the cluster "
        "stops (a table widget in Jupyter; text in a terminal until interrupted).",
    )
    @argument("-v", "--version", action="store_true", help="Print ipcmagic's version.")
    @argument("-h", "--help", action="store_true", help="Show this help.")
    # ipcmagic 1.x's spellings, for notebooks written for it
    @argument("--num_engines", type=int, dest="n", help=argparse.SUPPRESS)
    @argument("--cpus_per_engine", type=int, dest="cpus_per_engine", help=argparse.SUPPRESS)
    @line_magic
    def ipcluster(self, line: str = "") -> None:
        """Start, stop or show the ipyparallel cluster of this kernel.

        ``%ipcluster start -n 4`` starts a controller and 4 engines: an ``srun --overlap`` job step
        inside the current Slurm allocation (engine id == MPI rank), ``mpirun``, or local processes.
        It returns once all engines are registered; then ``%px``, ``%%px`` and ``%autopx`` run on
        them, and ``ipcmagic.client()`` gives the ipyparallel Client; with ``--torch`` they are one
        torch.distributed world that stays up between cells; with ``--dask`` they are also
        dask.distributed workers and ``ipcmagic.dask_client()`` gives a dask Client.
        ``%ipcluster status`` shows each engine (alive or gone, MPI rank, host, pid, CPUs, GPUs),
        ``%ipcluster restart`` starts the engines anew, ``%ipcluster stop`` stops everything. Each
        kernel has its own cluster; it is stopped when the kernel exits, and by a watchdog when the
        kernel is killed.
        """
        args = _parse(self.ipcluster, line)
        if args.help:  # what %ipcluster? shows
            print(self.ipcluster.__doc__.removeprefix("::\n\n").strip())
            return
        if args.version:
            print(f"ipcmagic {__version__}")
            return
        if args.action is None:
            raise UsageError("Say what to do: %ipcluster start|stop|status|restart (see %ipcluster?).")
        getattr(self, f"_{args.action}")(args)

    def _name_holders(self) -> Callable[[], None]:
        """Find what else holds this job's CPUs and GPUs, meanwhile; the call returned prints a
        line on each (Slurm has 2 s to answer: slurmctld down, a start does not wait longer)."""
        found: list[str] = []
        finding = threading.Thread(target=lambda: found.extend(self.cluster.holders()), daemon=True)
        finding.start()

        def say() -> None:
            finding.join()
            for line in found:
                print(f"ipcmagic: {line}", file=sys.stderr, flush=True)

        return say

    def _start(self, args) -> None:
        plan = self.cluster.plan_start(
            Allocation.from_env(),
            launcher=args.launcher,
            n=args.n,
            cpus_per_engine=args.cpus_per_engine,
            cpu_bind=args.cpu_bind,
            gpus_per_engine=args.gpus_per_engine,
            mpi=args.mpi,
            dask=args.dask,
            torch=args.torch,
            launcher_args=args.launcher_args,
        )
        say_holders = self._name_holders()  # while the cluster starts
        tic = time.perf_counter()
        try:
            self.cluster.start(plan, timeout=args.timeout)
        finally:
            say_holders()
        plain_client.install(self._connection_file)  # a plain ipyparallel.Client() reaches it
        engines = f"{plan.n} {plan.launcher} engine{'s' if plan.n > 1 else ''}"
        why = f" ({plan.rule})" if plan.rule else ""
        print(f"{engines} ready in {time.perf_counter() - tic:.1f} s{why}; %%px runs cells on them.")
        self._describe_services()

    def _connection_file(self) -> str | None:
        return self.cluster.connection_file if self.cluster.running else None

    def _describe_services(self) -> None:
        """What the engines are besides engines: a torch.distributed world, dask workers."""
        if self.cluster.torch_backend is not None:
            print(describe_world(self.cluster.torch_backend, self.cluster.plan.n))
        if self.cluster.dask_client is not None:
            from .cluster.daskcluster import describe

            print(describe(self.cluster.dask_client))

    def _stop(self, args) -> None:
        if not self.cluster.running:
            print("No cluster is running.")
            return
        self.cluster.stop()
        print("Cluster stopped.")

    def _restart(self, args) -> None:
        tic = time.perf_counter()
        if args.lost:
            new = self.cluster.replace_lost(timeout=args.timeout)
            print(f"{names(new).capitalize()} replaced the lost in {time.perf_counter() - tic:.1f} s.")
            return
        self.cluster.restart(timeout=args.timeout)
        print(f"{self.cluster.plan.n} engines restarted in {time.perf_counter() - tic:.1f} s.")
        self._describe_services()

    def _status(self, args) -> None:
        if args.watch:
            self.cluster.watch_usage(LIVE_INTERVAL).show()
            return
        if not self.cluster.running:
            print("\n".join(["No cluster is running.", *self.cluster.holders()]))
            return
        display(self.cluster.status())
        self._describe_services()

    @magic_arguments()
    @argument("name", help="Variable holding the AsyncResult, e.g. from %%px --noblock -o NAME.")
    @line_magic
    def pxwatch(self, line: str) -> Any:
        """Follow non-blocking parallel work until it completes: each engine's output as it
        arrives, then the results, or the errors as ``%%px`` shows them. Interrupting stops the
        watching; the work goes on.
        """
        args = _parse(self.pxwatch, line)
        result = self.shell.user_ns.get(args.name)
        if not hasattr(result, "stream_output"):
            raise UsageError(
                f"{args.name!r} is not a parallel result; start the work with %%px --noblock -o {args.name}."
            )
        return watch(result)

    @magic_arguments()
    @argument("seconds", type=_positive_seconds, help="Timeout in seconds.")
    @cell_magic
    def pxtimeout(self, line: str, cell: str) -> None:
        """Run the cell on every engine, like ``%%px``, for at most SECONDS: then the engines are
        interrupted (SIGINT), and restarted if they do not stop (e.g. ranks blocked in MPI), and
        the cell fails saying so. The cluster is usable afterwards.
        """
        args = _parse(self.pxtimeout, line)
        if not self.cluster.running:
            raise UsageError("No cluster is running; start one with %ipcluster start.")
        run_bounded(self.cluster, cell, args.seconds)

    @magic_arguments()
    @argument(
        "-n",
        "--nproc-per-node",
        type=_count,
        help="Ranks per node, or gpu: one per GPU of a node. Default: one per GPU where the job's "
        "nodes have GPUs (each rank's is cuda:LOCAL_RANK, as under torchrun), else 1.",
    )
    @argument("--nnodes", type=int, default=1, help="Nodes of the allocation to use (srun only).")
    @argument(
        "--launcher",
        choices=TORCHRUN_LAUNCHERS,
        help="standalone: ipcmagic's launcher, ranks on this node; srun: one srun --overlap "
        "step with MASTER_ADDR/PORT, RANK, LOCAL_RANK, WORLD_SIZE; auto: srun in an allocation.",
    )
    @argument("--timeout", type=_positive_seconds, help="Stop every rank after this many seconds.")
    @argument("--port", type=_port, help="MASTER_PORT (default: a free port).")
    @argument("--environment", default="", help="srun --environment (container EDF file).")
    @argument("--container-workdir", default="", help="srun --container-workdir.")
    @argument("--python", help="Interpreter of the ranks (default: this kernel's; set it in containers).")
    @argument(
        "--gpus-per-rank",
        type=int,
        default=0,
        help="GPUs of each rank's own: it sees only those (srun --gpus-per-task; standalone: "
        "CUDA_VISIBLE_DEVICES). Default 0: each rank sees all GPUs of its node.",
    )
    @argument("--srun-args", default="", help='Extra srun options, quoted: "--exclusive".')
    @argument(
        "--push",
        default="",
        help="Notebook variables to define on every rank before the cell runs: NAME[,NAME...].",
    )
    @argument(
        "--pull",
        default="",
        help="Variables the cell defines, set in the notebook after a successful run to the list of "
        "the ranks' values, by rank: NAME[,NAME...].",
    )
    @argument(
        "args",
        nargs=argparse.REMAINDER,
        help="Line form: SCRIPT [ARGS...]; cell form: arguments for the cell (after --).",
    )
    @line_cell_magic
    def torchrun(self, line: str = "", cell: str | None = None) -> None:
        """Run a cell (``%%torchrun``) or a script (``%torchrun script.py``) on every rank of a
        distributed PyTorch job; output streams live as ``[rank] line``. A failing rank fails the
        cell, naming the rank; interrupting the kernel stops every rank.
        """
        args = _parse(self.torchrun, line)
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        if cell is None and not rest:
            raise UsageError(
                "Name a script: %torchrun [options] script.py [args], or use %%torchrun in a cell."
            )
        push = {name: self._variable(name) for name in _names(args.push, "--push")}
        self._name_holders()()
        pulled = self.torchrun_defaults.run_script(
            cell if cell is not None else rest[0],
            rest if cell is not None else rest[1:],
            is_file=cell is None,
            push=push,
            pull=_names(args.pull, "--pull"),
            nproc=args.nproc_per_node,
            nnodes=args.nnodes,
            launcher=args.launcher,
            timeout=args.timeout,
            port=args.port,
            python=args.python,
            srun_args=args.srun_args,
            environment=args.environment,
            container_workdir=args.container_workdir,
            gpus_per_rank=args.gpus_per_rank,
        )
        self.shell.user_ns.update(pulled)

    def _variable(self, name: str) -> Any:
        if name not in self.shell.user_ns:
            raise UsageError(f"--push {name}: the notebook has no variable {name}.")
        return self.shell.user_ns[name]
