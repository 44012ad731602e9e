"""How ranks ended, in the launchers' own words: srun's ``task N: ...`` lines (which ipcmagic's
standalone launcher prints too, as ``ipcmagic: error: ...``) and Open MPI's mpirun reports, read
back as :class:`Ended` records and said in one sentence.

srun names a signal with ``strsignal`` (``Killed``, ``Segmentation fault``), as
:func:`signal.strsignal` does on the same machine, so the signal's name can be given beside it.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .slurm import expand_range

#: srun: ``srun: error: nid001: tasks 0-1,3: Exited with exit code 1``, ``...: task 2: Killed``
_SRUN = re.compile(r"^(?:srun|ipcmagic): error: (\S+): tasks? ([\d,-]+): (.+?)\s*$", re.MULTILINE)
#: Open MPI: ``mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).``
_OMPI_SIGNAL = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)")
#: Open MPI: ``Process name: [[27409,1],1]`` then ``Exit code: 3`` (the first rank to fail)
_OMPI_EXIT = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*\n\s*Exit code:\s*(\d+)")
#: the failure reports stand at the end of a launcher's output
_REPORT_LINES = 200
#: how a rank's SIGKILL that no launcher sent is said: nothing in Python sends it, the kernel's
#: out-of-memory killer does (where the step's cgroup saw it, srun says ``Out Of Memory`` instead)
KILLED = "was killed by SIGKILL (Killed)"
KILLED_HINT = "was killed by SIGKILL (Killed; often the out-of-memory killer)"


@dataclass(frozen=True)
class Ended:
    """Ranks that ended the same way, on one node (None where the launcher did not say)."""

    ranks: tuple[int, ...]
    how: str  # "exited with code 3", "was killed by SIGKILL (Killed)"
    node: str | None = None


def by_returncode(code: int) -> str:
    """How a process ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        return by_signal(-code)
    return f"exited with code {code}"


def by_signal(number: int) -> str:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"was killed by signal {number}"
    return f"was killed by {sig.name} ({signal.strsignal(sig)})"


def _srun_how(words: str) -> str:
    exited = re.fullmatch(r"Exited with exit code (\d+)", words)
    if exited:
        return f"exited with code {exited[1]}"
    text = words.removesuffix(" (core dumped)")
    for sig in signal.Signals:
        if signal.strsignal(sig) == text:
            return f"was killed by {sig.name} ({text})"
    if words == "Out Of Memory":  # the step's cgroup ran out of memory: the OOM killer's SIGKILL
        return "was killed by the OOM killer (Out Of Memory)"
    return f"ended: {words}"


def rank_exits(output: str) -> list[Ended]:
    """Every rank's end the launcher reported in ``output``, the first failure first (the order of
    the reports); a rank reported twice counts once."""
    report = "\n".join(output.splitlines()[-_REPORT_LINES:])
    found = [(m.start(), said(m)) for pattern, said in _REPORTS for m in pattern.finditer(report)]
    seen: set[int] = set()
    ended = []
    for _, end in sorted(found, key=lambda item: item[0]):
        ranks = tuple(rank for rank in end.ranks if rank not in seen)
        seen.update(ranks)
        if ranks:
            ended.append(Ended(ranks, end.how, end.node))
    return ended


def first_heard_first(ended: list[Ended], heard: Mapping[int, float]) -> list[Ended]:
    """``ended`` with the ranks heard to end first (``heard``: rank -> when) first, the others in
    the launcher's order. srun reports a node's ranks as that node's daemon tells it: a rank killed
    on another node (the OOM killer's SIGKILL) could come after the ranks that ended because of
    it, and then be read as the one the launcher stopped."""
    return sorted(ended, key=lambda end: min(heard.get(rank, math.inf) for rank in end.ranks))


#: each launcher report and the end it says
_REPORTS = [
    (_SRUN, lambda m: Ended(tuple(map(int, expand_range(m[2]))), _srun_how(m[3]), m[1])),
    (_OMPI_SIGNAL, lambda m: Ended((int(m[1]),), by_signal(int(m[3])), m[2])),
    (_OMPI_EXIT, lambda m: Ended((int(m[1]),), f"exited with code {m[2]}")),
]


def describe(ended: list[Ended], launcher: str = "the launcher") -> str:
    """``ranks 0, 1 exited with code 1; srun then stopped the others: rank 2 with SIGTERM``."""
    items = [(rank, end.how, report) for report, end in enumerate(ended) for rank in end.ranks]
    return sentence(sorted(items), launcher, ranks_named)


def sentence(items: list[tuple[Any, str, int]], launcher: str | None, who: Callable[[list], str]) -> str:
    """Say how each of ``items`` (one, how it ended, the number of the report that said so) ended,
    those that ended alike together, the first report first; with a ``launcher``, those of later
    reports killed by SIGTERM or SIGKILL are what it then did to the others; a SIGKILL it did not
    send is hinted at the out-of-memory killer."""
    first = min((report for _, _, report in items), default=0)
    groups: dict[tuple[bool, str], list[tuple[int, Any]]] = {}  # (stopped, how or signal) -> ones
    for index, (one, how, report) in sorted(enumerate(items), key=lambda item: item[1][2]):
        signal_name = re.match(r"was killed by (SIGTERM|SIGKILL) ", how)
        stopped = bool(launcher and report != first and signal_name)
        groups.setdefault((stopped, signal_name[1] if stopped else how), []).append((index, one))
    said, stopped_ones = [], []
    for (stopped, how), members in groups.items():
        ones = [one for _, one in sorted(members, key=lambda member: member[0])]
        if stopped:
            stopped_ones.append(f"{who(ones)} with {how}")
        else:
            how = KILLED_HINT if how == KILLED else how
            said.append(f"{who(ones)} {how.replace('was ', 'were ', 1) if len(ones) > 1 else how}")
    if stopped_ones:
        said.append(f"{launcher} then stopped the others: {', '.join(stopped_ones)}")
    return "; ".join(said)


def ranks_named(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
