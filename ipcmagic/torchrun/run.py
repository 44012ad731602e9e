"""Running a ``%%torchrun`` plan: its ranks' output streams live, prefixed by rank; every rank is
stopped on interrupt, timeout or a lost node; a failure names the rank that ended first."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping

from ..base.errors import Interrupted
from ..base.exits import Ended, by_returncode, describe, first_heard_first, rank_exits, ranks_named
from .exchange import Exchange
from .plan import TorchrunPlan

#: a rank's line, labelled as srun --label and the standalone launcher do
_PREFIX = re.compile(r"^\s*(\d+): ")
#: how a run is stopped: each signal to the launcher's process group, ``grace`` seconds apart
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
#: seconds srun has to report a rank's end that the rank did not announce; then its node is lost
SRUN_WORD = 2.0
#: slurmstepd's word on a cancelled step, labelled as a rank's line by srun --label
_CANCELLED = re.compile(r"slurmstepd\S*: error: \*\*\* STEP \S+ .*CANCELLED")
#: the launchers' words on how ranks ended and how the others were stopped, which the run's error
#: says in one line: kept for it, not shown (``srun: error: nid001: task 1: Exited with exit code 1``)
_ENDS = re.compile(
    r"^(?:srun|ipcmagic): error: \S+: tasks? [\d,-]+: "
    r"|^srun: (?:launch/slurm: _step_signal: |Force Terminated )"
)


class TorchrunError(RuntimeError):
    """A rank failed, or the run was stopped; the message names the rank and exit code."""

    results: list[bytes | None] = []  # what each rank put in the run's exchange before it failed

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class NodeLost(TorchrunError):
    """Ranks ended while srun saw no end of them: their node died or is cut off."""


class TorchrunInterrupted(Interrupted):
    """The user interrupted the kernel during a run; every rank was stopped."""


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
    if not (_ENDS.search(line) or _CANCELLED.search(line)):
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
