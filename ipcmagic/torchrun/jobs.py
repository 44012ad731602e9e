"""``%%torchrun``'s defaults and runs: a cell, a script or a function on every rank, with values
sent in and out through the run's exchange (:mod:`ipcmagic.torchrun.exchange`)."""

from __future__ import annotations

import linecache
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from traitlets import CaselessStrEnum, Dict, Float, Unicode
from traitlets.config import LoggingConfigurable

from ..base.addresses import address_for
from ..base.commands import require_command, resolve_launcher, shell_words
from ..base.containers import require_slurm_files, step_container
from ..base.environments import warn_of_traps
from ..base.slurm import Allocation, require_full_export
from ..base.watchdog import Watchdog
from .exchange import Exchange
from .plan import (
    LAUNCHERS,
    MARKER_VAR,
    RANK_PROGRAM,
    cell_program,
    free_port,
    plan_srun,
    plan_standalone,
    rank_count,
)
from .rank import PEAKS_VAR
from .run import TorchrunError, run


class Torchrun(LoggingConfigurable):
    """Defaults of ``%%torchrun``, configurable in ``ipython_config.py`` (``c.Torchrun.launcher``)."""

    launcher = CaselessStrEnum(
        LAUNCHERS,
        "auto",
        config=True,
        help="auto: srun inside a Slurm allocation, else standalone.",
    )
    python = Unicode(
        sys.executable, config=True, help="Interpreter of the ranks; in a container, the one inside it."
    )
    grace = Float(3.0, config=True, help="Seconds between SIGINT, SIGTERM and SIGKILL when stopping.")
    env = Dict(
        value_trait=Unicode(),
        config=True,
        help="The site's variables for every run's ranks (e.g. NCCL's network settings); a variable "
        "the kernel already has keeps the kernel's value.",
    )

    def run_script(
        self,
        code_or_path: str,
        args: list[str],
        *,
        is_file: bool,
        push: dict[str, Any] | None = None,
        pull: list[str] = (),
        **options: Any,
    ) -> dict[str, list[Any]]:
        """Run a script file, or cell code (passed in the environment, never written), on every
        rank; a cell gets the ``push`` values as variables, and each ``pull`` name comes back as
        the list of the ranks' values, by rank."""
        if is_file and (push or pull):
            raise UsageError("--push and --pull work with %%torchrun cells, not with script files.")
        if is_file:  # through rank.py too: the kernel hears how each rank ends
            program, env = [*RANK_PROGRAM, code_or_path, *args], {}
        else:
            program, env = cell_program(code_or_path, args)
        offer = _offer({"push": push or {}, "pull": list(pull)}, "--push") if push or pull else None
        results = self._run(program, env, offer, **options)
        return pulled(results, list(pull)) if pull else {}

    def launch(self, fn: Callable, args: tuple, kwargs: dict[str, Any], **options: Any) -> list[Any]:
        """Call ``fn(*args, **kwargs)`` on every rank; the return values, by rank."""
        offer = _offer((fn, args, kwargs, _source(fn)), "launch: the function or its arguments")
        try:
            results = self._run(list(RANK_PROGRAM), {}, offer, **options)
        except TorchrunError as failed:
            raise _raised(failed.results) or failed from None
        return [_outcome(results, rank)[1] for rank in range(len(results))]

    def _run(
        self,
        program: list[str],
        env: dict[str, str],
        offer: bytes | None,
        *,
        nproc: int | str | None = None,
        nnodes: int = 1,
        launcher: str | None = None,
        timeout: float | None = None,
        port: int | None = None,
        python: str | None = None,
        srun_args: list[str] | str = (),
        environment: str = "",
        container_workdir: str = "",
        gpus_per_rank: int = 0,
    ) -> list[bytes | None]:
        """Run ``python *program`` on every rank, with an :class:`~ipcmagic.torchrun.exchange.Exchange` that
        offers ``offer`` when given; what each rank put there, by rank. A failure's TorchrunError
        carries them too (``results``)."""
        allocation = Allocation.from_env()
        launcher = resolve_launcher(launcher or self.launcher, allocation, LAUNCHERS, "standalone")
        if isinstance(srun_args, str):
            srun_args = shell_words(srun_args, "--srun-args")
        if launcher == "standalone" and (nnodes != 1 or environment or container_workdir or srun_args):
            raise UsageError(
                "--nnodes, --environment, --container-workdir and --srun-args need --launcher srun."
            )
        if nnodes < 1 or gpus_per_rank < 0:
            raise UsageError("--nnodes must be at least 1, --gpus-per-rank 0 or more.")
        if launcher == "srun":
            require_command("srun")
            require_slurm_files(os.environ)
            require_full_export(srun_args, "--srun-args")
            if nnodes > len(allocation.nodes):
                raise UsageError(
                    f"--nnodes {nnodes} is more than the {len(allocation.nodes)} node(s) of this allocation."
                )
        nproc, rule = rank_count(allocation if launcher == "srun" else None, nproc, nnodes)
        if nproc < 1:
            raise UsageError("-n must be at least 1.")
        if rule:
            print(
                f"%%torchrun: {nproc * nnodes} rank{'s' if nproc * nnodes > 1 else ''} ({rule})", flush=True
            )
        if environment:
            print(f"%%torchrun: the ranks run in {step_container(environment, os.environ)}", flush=True)
        directory = tempfile.mkdtemp(prefix="ipcmagic-torchrun-")
        token = os.path.basename(directory)
        name = f"ipcmagic-torchrun-{os.getpid()}"
        # stops the ranks (and their children) and removes the directory if the kernel dies
        job_id = allocation.job_id if allocation and launcher == "srun" else None  # its step to cancel
        watchdog = Watchdog(f"{MARKER_VAR}={token}", directory, job_id, name)
        nodes = allocation.nodes[:nnodes] if launcher == "srun" else ()
        # an srun run always has one: through it the kernel notices a rank whose node is lost; a
        # standalone run without values opens no port, and its ranks leave their peaks in `directory`
        exchange = Exchange(offer or b"", address_for(nodes)) if offer or launcher == "srun" else None
        handover = exchange.env if exchange else {PEAKS_VAR: directory}
        env = {**self.env, **os.environ, **env, MARKER_VAR: token, **handover}
        warn_of_traps(env)
        python = python or self.python
        port = port or free_port()
        try:
            if launcher == "srun":
                plan = plan_srun(
                    python,
                    nproc,
                    nnodes,
                    program,
                    allocation,
                    port,
                    env,
                    name=name,
                    srun_args=srun_args,
                    environment=environment,
                    container_workdir=container_workdir,
                    gpus_per_rank=gpus_per_rank,
                )
            else:
                plan = plan_standalone(python, nproc, program, port, env, gpus_per_rank=gpus_per_rank)
            try:
                run(plan, cwd=os.getcwd(), timeout=timeout, grace=self.grace, exchange=exchange)
            except TorchrunError as failed:
                failed.results = _by_rank(exchange, plan.ranks)
                raise
            peaks = exchange.peaks_of(plan.ranks) if exchange else left_peaks(directory, plan.ranks)
            print(peaks_line(peaks), flush=True)
        finally:
            if exchange is not None:
                exchange.close()
            watchdog.release()
        return _by_rank(exchange, plan.ranks)


def launch(
    fn: Callable,
    *args: Any,
    nproc: int | str | None = None,
    nnodes: int = 1,
    launcher: str | None = None,
    timeout: float | None = None,
    port: int | None = None,
    python: str | None = None,
    srun_args: list[str] | str = (),
    environment: str = "",
    container_workdir: str = "",
    gpus_per_rank: int = 0,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on every rank of a distributed PyTorch job, as ``%%torchrun``
    runs a cell (standalone, or one srun step over ``nnodes`` nodes, ``nproc`` ranks each): fresh
    processes with RANK, WORLD_SIZE, MASTER_ADDR, ... set; their output streams live as
    ``[rank] line``. Returns the list of ``fn``'s return values, by rank; an exception on a rank
    raises :class:`RankError` naming the rank, with its traceback.

    The options are ``%%torchrun``'s: ``nproc`` is ``-n`` (a number, ``"gpu"``, or None: one per
    GPU of the node, else 1), ``srun_args`` a list or a shell string, ``environment`` an EDF.

    ``fn`` travels by value (cloudpickle), also when it is defined in the notebook; its arguments
    and results must be picklable, and the names it uses from the notebook travel with it. The
    kernel never forks and never imports torch for this.
    """
    shell = get_ipython()  # the kernel's %%torchrun defaults (c.Torchrun.*) where it has them
    defaults = Torchrun(config=shell.config) if shell is not None else Torchrun()
    options = {
        "nproc": nproc,
        "nnodes": nnodes,
        "launcher": launcher,
        "timeout": timeout,
        "port": port,
        "python": python,
        "srun_args": srun_args,
        "environment": environment,
        "container_workdir": container_workdir,
        "gpus_per_rank": gpus_per_rank,
    }
    return defaults.launch(fn, args, kwargs, **options)


class RankError(TorchrunError):
    """A rank's launched function raised; the message names the rank, the traceback is the rank's."""

    def __init__(self, rank: int, summary: str, remote_traceback: str) -> None:
        super().__init__(f"rank {rank} raised {summary}")
        self.remote_traceback = remote_traceback

    def _render_traceback_(self) -> list[str]:
        return [*self.remote_traceback.rstrip().splitlines(), f"{type(self).__name__}: {self}"]


def _offer(value: Any, what: str) -> bytes:
    """``value`` as the bytes every rank gets; UsageError naming ``what`` cannot be sent."""
    import cloudpickle

    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        if isinstance(value, dict) and value.get("push"):  # say which variable
            for name, item in value["push"].items():
                _offer(item, f"--push {name}")
        raise UsageError(f"{what} cannot be sent to the ranks ({type(e).__name__}: {e}).") from None


def _source(fn: Callable) -> tuple[str, list[str]] | None:
    """The file name and lines of a function defined in the notebook, for the rank's tracebacks
    (cloudpickle renames its code ``<dynamic-code>``, and the cell is in no file there)."""
    filename = getattr(getattr(fn, "__code__", None), "co_filename", "")
    lines = linecache.getlines(filename) if filename and not os.path.exists(filename) else []
    return (filename, lines) if lines else None


def _by_rank(exchange: Exchange | None, ranks: int) -> list[bytes | None]:
    """What each rank put in the exchange, by rank (None: nothing)."""
    return [exchange.results.get(rank) if exchange else None for rank in range(ranks)]


def left_peaks(directory: str, ranks: int) -> list[tuple[int, int] | None]:
    """The peak memory (RSS, GPU) each rank of a run without an exchange left in ``directory``."""
    peaks = []
    for rank in range(ranks):
        try:
            with open(os.path.join(directory, f"peak-{rank}")) as f:
                rss, gpu = f.read().split()
            peaks.append((int(rss), int(gpu)))
        except (OSError, ValueError):
            peaks.append(None)
    return peaks


def peaks_line(peaks: list[tuple[int, int] | None]) -> str:
    """The run's last line: each rank's peak resident memory and GPU memory, by rank."""
    rss = ", ".join(_size(peak[0]) if peak else "?" for peak in peaks)
    used = [peak for peak in peaks if peak and peak[1] >= 0]
    gpu = (
        ", ".join(_size(peak[1]) if peak and peak[1] >= 0 else "-" for peak in peaks) if used else "none used"
    )
    return f"%%torchrun: peak memory by rank: RSS {rss}; GPU {gpu}"


def _size(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 10 * 2**30 else f"{size / 2**20:.0f} MiB"


def _outcome(results: list[bytes | None], rank: int) -> tuple:
    """What ``rank`` put: ("ok", value), ("raised", summary, traceback) or ("missing", names)."""
    if results[rank] is None:
        raise TorchrunError(f"rank {rank} sent nothing back")
    outcome = pickle.loads(results[rank])
    if outcome[0] == "unpicklable":
        raise TorchrunError(f"rank {rank}'s values cannot be sent to the kernel ({outcome[1]})")
    return outcome


def _raised(results: list[bytes | None]) -> RankError | None:
    """The exception of the first rank whose function raised, if one did."""
    put = [(rank, pickle.loads(result)) for rank, result in enumerate(results) if result is not None]
    return next((RankError(rank, *outcome[1:]) for rank, outcome in put if outcome[0] == "raised"), None)


def pulled(results: list[bytes | None], names: list[str]) -> dict[str, list[Any]]:
    """Each pulled name's values by rank; TorchrunError for a rank that did not define one."""
    outcomes = [_outcome(results, rank) for rank in range(len(results))]
    for rank, (kind, value) in enumerate(outcomes):
        if kind == "missing":
            raise TorchrunError(f"--pull {value[0]}: rank {rank} did not define {value[0]}")
    return {name: [values[name] for _, values in outcomes] for name in names}
