"""``%%torchrun``: a cell run as a distributed PyTorch script, standalone or as one srun step.

Pure plan builders (:func:`plan_standalone`, :func:`plan_srun`) give the argv and environment;
:func:`run` runs a plan, streams each line prefixed by its rank, and stops every rank on
interrupt, timeout or failure.
"""

from __future__ import annotations

import linecache
import os
import pickle
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from traitlets import CaselessStrEnum, Float, Unicode
from traitlets.config import LoggingConfigurable

from . import rank as rank_side
from . import standalone
from .cluster import Interrupted, address_for, require_command, resolve_launcher
from .exchange import Exchange
from .exits import Ended, by_returncode, describe, first_heard_first, rank_exits, ranks_named
from .rank import CELL_VAR
from .slurm import BLOCK, Allocation, require_full_export, step_env
from .watchdog import Watchdog

LAUNCHERS = ("auto", "standalone", "srun")

#: variables a launcher sets per rank; inherited from the kernel they mislead torch and accelerate
DISTRIBUTED_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)

_TASK_ENV = (
    "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
    'LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; exec "$@"'
)
#: marks the launcher and the ranks of one run (and their children) for :mod:`ipcmagic.watchdog`
MARKER_VAR = "IPCMAGIC_TORCHRUN"
#: the largest cell passed in the environment (Linux refuses a single string over 128 KiB)
MAX_CELL_BYTES = 120_000
#: what every rank runs: ``python -c`` this (:mod:`ipcmagic.rank`)
RANK_PROGRAM = ["-c", Path(rank_side.__file__).read_text()]
#: what the standalone launcher runs: ``python -c`` this (:mod:`ipcmagic.standalone`)
STANDALONE_PROGRAM = ["-c", Path(standalone.__file__).read_text()]
#: a rank's line, labelled as srun --label and the standalone launcher do
_PREFIX = re.compile(r"^\s*(\d+): ")
#: how a run is stopped: each signal to the launcher's process group, ``grace`` seconds apart
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
#: seconds srun has to report a rank's end that the rank did not announce; then its node is lost
SRUN_WORD = 2.0
#: slurmstepd's word on a cancelled step, labelled as a rank's line by srun --label
_CANCELLED = re.compile(r"slurmstepd\S*: error: \*\*\* STEP \S+ .*CANCELLED")


class TorchrunError(RuntimeError):
    """A rank failed, or the run was stopped; the message names the rank and exit code."""

    results: list[bytes | None] = []  # what each rank put in the run's exchange before it failed

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class NodeLost(TorchrunError):
    """Ranks ended while srun saw no end of them: their node died or is cut off."""


class TorchrunInterrupted(Interrupted):
    """The user interrupted the kernel during a run; every rank was stopped."""


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without inherited per-rank variables (RANK, MASTER_ADDR, TORCHELASTIC_*, ...)."""
    return {k: v for k, v in env.items() if k not in DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC_")}


def pop_distributed_env() -> dict[str, str]:
    """Remove per-rank variables from this kernel's ``os.environ`` and return what was removed.

    For ``accelerate.notebook_launcher`` or ``transformers.Trainer`` in a container that sets
    ``RANK``/``LOCAL_RANK`` for the kernel: call it once before them.
    """
    removed = {k: os.environ[k] for k in os.environ.keys() - clean_env(os.environ).keys()}
    for name in removed:
        del os.environ[name]
    return removed


def free_port() -> int:
    """A TCP port that is free now on this host."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TorchrunPlan:
    """What will run: the argv, the complete environment, how many ranks that starts, and the
    launcher's name (torchrun, srun)."""

    argv: list[str]
    env: dict[str, str]
    ranks: int
    launcher: str


def cell_program(code: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Python arguments and environment that run ``code`` as a script with ``args`` on a rank."""
    if "\0" in code:
        raise UsageError("The cell contains a null byte, which cannot reach the ranks; remove it.")
    size = len(code.encode())
    if size > MAX_CELL_BYTES:
        raise UsageError(
            f"The cell has {size // 1000} kB, more than %%torchrun passes to the ranks "
            f"({MAX_CELL_BYTES // 1000} kB); save it as a file and run %torchrun [options] file.py."
        )
    # bytes: the kernel's locale may have no encoding for the cell (LC_ALL=C with PYTHONUTF8=0)
    return [*RANK_PROGRAM, *args], {CELL_VAR: code.encode()}


def streamed(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for ranks whose output the kernel shows as it comes: unbuffered, and UTF-8 (what the
    kernel reads) unless the user chose an encoding, also where the locale has none (LC_ALL=C)."""
    return {"PYTHONIOENCODING": "utf-8", **env, "PYTHONUNBUFFERED": "1"}


def plan_standalone(
    python: str, nproc: int, program: list[str], port: int, env: Mapping[str, str]
) -> TorchrunPlan:
    """ipcmagic's standalone launcher (:mod:`ipcmagic.standalone`) on this node, the world's store
    on ``port``; each rank runs ``python *program``."""
    argv = [python, *STANDALONE_PROGRAM, str(nproc), python, *program]
    task_env = {**streamed(clean_env(env)), "MASTER_PORT": str(port)}
    return TorchrunPlan(argv, task_env, nproc, "ipcmagic")


def plan_srun(
    python: str,
    nproc: int,
    nnodes: int,
    program: list[str],
    allocation: Allocation,
    port: int,
    env: Mapping[str, str],
    *,
    name: str,
    srun_args: list[str] = (),
    environment: str = "",
    container_workdir: str = "",
) -> TorchrunPlan:
    """One ``srun --overlap`` step on the allocation's first ``nnodes`` nodes, env:// for torch;
    each rank runs ``python *program``."""
    nodes = allocation.nodes[:nnodes]
    # --quit-on-interrupt: one SIGINT reaches every rank (plain srun only prints a status), then the step ends
    argv = [
        "srun",
        "--overlap",
        "--label",
        "--quit-on-interrupt",
        "--kill-on-bad-exit=1",
        f"--job-name={name}",
        f"--nodes={nnodes}",
        f"--ntasks={nproc * nnodes}",
        f"--ntasks-per-node={nproc}",
        BLOCK,
        f"--nodelist={','.join(nodes)}",
    ]
    if environment:
        argv.append(f"--environment={environment}")
    if container_workdir:
        argv.append(f"--container-workdir={container_workdir}")
    argv += [*srun_args, "bash", "-c", _TASK_ENV, "torchrun-task", python, *program]
    task_env = {**streamed(step_env(clean_env(env))), "MASTER_ADDR": nodes[0], "MASTER_PORT": str(port)}
    return TorchrunPlan(argv, task_env, nproc * nnodes, "srun")


def _prefixed(line: str) -> str:
    """`` 1: x`` (a labelled rank's line) as ``[1] x``."""
    match = _PREFIX.match(line)
    if not match:
        return line
    return f"[{match[1]}] {line[match.end() :]}"


def _failure(output: str, returncode: int, launcher: str, ended: Mapping[int, float] | None = None) -> str:
    """Which ranks failed and how, in the launcher's words, the first to end (``ended``: when each
    rank's end was heard, where known) first; else how the launcher ended."""
    reports = first_heard_first(rank_exits(output), ended or {})
    return describe(reports, launcher) or f"{launcher} {by_returncode(returncode)}"


def _stop(process: subprocess.Popen, grace: float, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the process group, each after ``grace`` seconds."""
    for sig in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _show(line: str, output: list[str]) -> None:
    output.append(line)
    sys.stdout.write(_prefixed(line))
    sys.stdout.flush()


def interrupted_message(ranks: int) -> str:
    """What an interrupted run says."""
    return f"%%torchrun interrupted; {ranks} rank{'s' if ranks > 1 else ''} stopped"


def timed_out_message(timeout: float) -> str:
    """What a run stopped by ``--timeout`` says."""
    return f"stopped after the --timeout of {timeout:g} s"


def lost_node_message(lost: dict[int, str], reported: list[Ended]) -> str:
    """What a run says whose ranks ended without srun seeing them end: their node is lost."""
    nodes = sorted(set(lost.values()))
    if len(nodes) == 1:
        said = f"node {nodes[0]} lost: {ranks_named(sorted(lost))}"
    else:
        where = [f"{ranks_named([r for r in sorted(lost) if lost[r] == node])} on {node}" for node in nodes]
        said = f"nodes {', '.join(nodes)} lost: {' and '.join(where)}"
    said += (
        f" ended while srun saw no end of {'it' if len(lost) == 1 else 'them'} (the node is down or cut "
        "off), so ipcmagic stopped the srun step"
    )
    return f"{said}; srun said: {describe(reported, 'srun')}" if reported else said


def _stream(lines: queue.Queue, output: list[str], check: Callable[[], None]) -> None:
    """Show lines until the end of output, calling ``check`` whenever none came for 0.1 s."""
    while True:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            check()
            continue
        if line is None:
            return
        _show(line, output)


def _watch(
    plan: TorchrunPlan, output: list[str], timeout: float | None, exchange: Exchange | None
) -> Callable[[], None]:
    """What :func:`_stream` checks: ``--timeout``, and in an srun run ranks whose node is lost."""
    deadline = time.monotonic() + timeout if timeout else None

    def check() -> None:
        if deadline and time.monotonic() > deadline:
            raise TorchrunError(timed_out_message(timeout))
        unheard = exchange.unheard(SRUN_WORD) if exchange and plan.launcher == "srun" else {}
        if unheard:  # srun's reports are read only then
            reported = rank_exits("".join(line for line in output if line.startswith("srun: error:")))
            said = {rank for end in reported for rank in end.ranks}
            lost = {rank: node for rank, node in unheard.items() if rank not in said}
            if lost:
                raise NodeLost(lost_node_message(lost, reported))

    return check


def _is_rank_output(line: str) -> bool:
    """Whether a line comes from a rank, not from the launcher telling how it stops them."""
    return bool(_PREFIX.match(line)) and not _CANCELLED.search(line)


def run(
    plan: TorchrunPlan,
    *,
    cwd: str,
    timeout: float | None = None,
    grace: float = 3.0,
    exchange: Exchange | None = None,
) -> None:
    """Run a plan in its own process group, streaming output live; raise TorchrunError on failure.

    On interrupt or timeout every rank is stopped (:func:`_stop`), and what the ranks print
    while stopping is still shown; an interrupt ends in :class:`TorchrunInterrupted`. When a
    rank's node is lost (``exchange`` knows), srun waits for it forever: it is killed at once,
    and the step cancelled after.
    """
    process = subprocess.Popen(
        plan.argv,
        env=plan.env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=lambda: [*map(lines.put, process.stdout), lines.put(None)], daemon=True)
    reader.start()
    output: list[str] = []
    try:
        _stream(lines, output, _watch(plan, output, timeout, exchange))
    except BaseException as e:
        _stop(process, grace, (signal.SIGKILL,) if isinstance(e, NodeLost) else STOP_SIGNALS)
        reader.join()
        interrupted = isinstance(e, KeyboardInterrupt)
        while (line := lines.get()) is not None:
            if not interrupted or _is_rank_output(line):
                _show(line, output)
        if interrupted:
            raise TorchrunInterrupted(interrupted_message(plan.ranks)) from None
        raise
    finally:
        process.wait()
        reader.join()
        process.stdout.close()
    if process.returncode:
        ended = exchange.ended if exchange else None
        raise TorchrunError(_failure("".join(output), process.returncode, plan.launcher, ended))


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
        nproc: int = 1,
        nnodes: int = 1,
        launcher: str | None = None,
        timeout: float | None = None,
        port: int | None = None,
        python: str | None = None,
        srun_args: list[str] = (),
        environment: str = "",
        container_workdir: str = "",
    ) -> list[bytes | None]:
        """Run ``python *program`` on every rank, with an :class:`~ipcmagic.exchange.Exchange` that
        offers ``offer`` when given; what each rank put there, by rank. A failure's TorchrunError
        carries them too (``results``)."""
        allocation = Allocation.from_env()
        launcher = resolve_launcher(launcher or self.launcher, allocation, LAUNCHERS, "standalone")
        if launcher == "standalone" and (nnodes != 1 or environment or container_workdir or srun_args):
            raise UsageError(
                "--nnodes, --environment, --container-workdir and --srun-args need --launcher srun."
            )
        if nproc < 1 or nnodes < 1:
            raise UsageError("-n and --nnodes must be at least 1.")
        if launcher == "srun":
            require_command("srun")
            require_full_export(srun_args, "--srun-args")
            if nnodes > len(allocation.nodes):
                raise UsageError(
                    f"--nnodes {nnodes} is more than the {len(allocation.nodes)} node(s) of this allocation."
                )
        directory = tempfile.mkdtemp(prefix="ipcmagic-torchrun-")
        token = os.path.basename(directory)
        name = f"ipcmagic-torchrun-{os.getpid()}"
        # stops the ranks (and their children) and removes the directory if the kernel dies
        job_id = allocation.job_id if allocation and launcher == "srun" else None  # its step to cancel
        watchdog = Watchdog(f"{MARKER_VAR}={token}", directory, job_id, name)
        nodes = allocation.nodes[:nnodes] if launcher == "srun" else ()
        # an srun run always has one: through it the kernel notices a rank whose node is lost
        exchange = Exchange(offer or b"", address_for(nodes)) if offer or launcher == "srun" else None
        env = {**os.environ, **env, MARKER_VAR: token, **(exchange.env if exchange else {})}
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
                )
            else:
                plan = plan_standalone(python, nproc, program, port, env)
            try:
                run(plan, cwd=os.getcwd(), timeout=timeout, grace=self.grace, exchange=exchange)
            except TorchrunError as failed:
                failed.results = _by_rank(exchange, plan.ranks)
                raise
        finally:
            if exchange is not None:
                exchange.close()
            watchdog.release()
        return _by_rank(exchange, plan.ranks)


def launch(
    fn: Callable,
    *args: Any,
    nproc: int = 1,
    nnodes: int = 1,
    launcher: str | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on every rank of a distributed PyTorch job, as ``%%torchrun``
    runs a cell (standalone, or one srun step over ``nnodes`` nodes, ``nproc`` ranks each): fresh
    processes with RANK, WORLD_SIZE, MASTER_ADDR, ... set; their output streams live as
    ``[rank] line``. Returns the list of ``fn``'s return values, by rank; an exception on a rank
    raises :class:`RankError` naming the rank, with its traceback.

    ``fn`` travels by value (cloudpickle), also when it is defined in the notebook; its arguments
    and results must be picklable, and the names it uses from the notebook travel with it. The
    kernel never forks and never imports torch for this.
    """
    from . import _magics  # the kernel's %%torchrun defaults (c.Torchrun.*), if loaded

    defaults = _magics.torchrun_defaults if _magics else Torchrun()
    options = {"nproc": nproc, "nnodes": nnodes, "launcher": launcher, "timeout": timeout}
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
