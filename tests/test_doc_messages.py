"""Every error message the docs quote is the code's own: each quote (``UsageError: ...`` and the
like in README.md and docs/, and troubleshooting's headings) is matched, as a template, against the
message the code builds for that case; a quote without a row here fails, so they cannot drift.

In a quote, ``...`` and ``<...>`` stand for any text, and a capital letter alone (``N``, ``T``, ``S``,
``N×C``) for a value.
"""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

from ipcmagic.base.commands import require_command
from ipcmagic.base.exits import Ended
from ipcmagic.base.slurm import Allocation
from ipcmagic.cluster import failed_start, halting, ipcluster, losses, roster
from ipcmagic.cluster.gpus import gpu_sets
from ipcmagic.cluster.plan import EnginePlan, plan_engines
from ipcmagic.torchrun import RankError, run
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_QUOTE = re.compile(
    r"`((?:UsageError|ClusterError|TorchrunError|NodeLost|RankError|ParallelTimeout|EnginesLost|KeyboardInterrupt|ipcmagic)"
    r": [^`]+)`"
)
_HEADING = re.compile(r"^\*\*`([^`]+)`\.\*\*", re.M)  # troubleshooting: **`message`.** what to do
ROW = {"id": 1, "rank": 1, "pid": 4242, "host": "nid001", "fate": "exited with code 3", "report": 0}
#: the others of ROW's step, which srun then stopped
OTHERS = [
    {
        "id": i,
        "rank": i,
        "pid": 4241 + i,
        "host": "nid001",
        "fate": "was killed by SIGKILL (Killed)",
        "report": 1,
    }
    for i in (0, 2)
]


def node_lost() -> list[dict]:
    """Engines 2 and 3 on nid002 stopped answering; ipcmagic stopped 0 and 1 with the step."""
    lost = [
        {"id": i, "rank": i, "pid": 4240 + i, "host": "nid002", "report": losses.NODE_REPORT} for i in (2, 3)
    ]
    for row in lost:
        row["fate"] = losses.NODE_LOST.format(step="srun")
    others = [{"id": i, "rank": i, "pid": 4240 + i, "host": "nid001", "report": 1 << 29} for i in (0, 1)]
    for row in others:
        row["fate"] = losses.STEP_STOPPED.format(step="srun")
    return lost + others


def usage_error(call, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as raised:
        call(*args, **kwargs)
    return f"UsageError: {raised.value}"


def too_few_gpus() -> str:
    engines = [{"id": i, "host": "vm", "gpus": "0,1,2"} for i in range(2)]
    with pytest.raises(ValueError) as raised:
        gpu_sets(engines, 2)
    return str(raised.value)


def messages(monkeypatch) -> dict[str, str]:
    """The message the code builds for each quoted case, by the docs' wording of the case."""
    from ipyparallel.error import EngineError

    monkeypatch.setenv("PATH", "/nonexistent")
    plan = EnginePlan("srun", 4)
    rows = [{"rank": None, "size": 1}] * 4
    step = [ROW, *OTHERS]
    four = [{**ROW, "id": i, "rank": i, "pid": 4241 + i} for i in range(4)]
    return {
        "rank 1 exited": "TorchrunError: "
        + run._failure(
            "srun: error: nid001: task 1: Exited with exit code 3\nsrun: error: nid001: task 0: Terminated\n",
            3,
            "srun",
        ),
        "torchrun interrupted": f"KeyboardInterrupt: {run.interrupted_message(2)}",
        "rank raised": f"RankError: {RankError(1, 'ValueError: boom', '')}",
        "torchrun timeout": f"TorchrunError: {run.timed_out_message(30)}",
        "torchrun node lost": "NodeLost: "
        + run.lost_node_message({2: "nid002", 3: "nid002"}, [Ended((0,), "exited with code 1")]),
        "lost engine": f"ipcmagic: {losses.lost_engines_message(step, 'srun')}",
        "engines lost": f"EnginesLost: {losses.lost_engines_message(step, 'srun')}",
        "node lost": f"ipcmagic: {losses.describe_loss(node_lost(), 'srun')}.",
        "failed fast": halting.ended_message(ROW, False, four[:1] + four[2:], [0, 2, 3], 4, 1.0),
        "lost, the others ended": halting.ended_message(ROW, True, OTHERS, [], 3, 1.0),
        "interrupted, stuck": halting.interrupted_message([1, 2], 3, 1.0),
        "went on": f"ipcmagic: {losses.describe_loss([{**ROW, 'rank': None}])}. "
        + ipcluster.go_on_message([0, 2], True),
        "restarted by itself": f"ipcmagic: {losses.describe_loss(step, 'srun')}. "
        + ipcluster.restart_lost_message(4, 3, 0),
        "not on PATH": usage_error(require_command, "srun"),
        "already running": f"UsageError: {ipcluster.already_running(plan)}",
        "start interrupted": f"KeyboardInterrupt: {ipcluster.INTERRUPTED_START}",
        "not one world": f"ClusterError: {roster.split_worlds(rows, 4)}",
        "launcher exited": "ClusterError: "
        + failed_start.start_failure(plan, EngineError("exited"), "srun: error: ...", 0, 60),
        "registered within": "ClusterError: "
        + failed_start.start_failure(plan, TimeoutError(), "out", 2, 60),
        "too few GPUs": f"ClusterError: {too_few_gpus()}",
        "too many CPUs": usage_error(plan_engines, Allocation("1", ("vm",), (5,), 5), n=4, cpus_per_engine=2),
    }


#: the row of each quote: which case it quotes
CASES = {
    "TorchrunError: rank 1 exited with code 3; srun then stopped the others: rank 0 with SIGTERM": (
        "rank 1 exited"
    ),
    "KeyboardInterrupt: %%torchrun interrupted; 2 ranks stopped": "torchrun interrupted",
    "RankError: rank 1 raised ValueError: ...": "rank raised",
    "TorchrunError: stopped after the --timeout of S s": "torchrun timeout",
    "NodeLost: node nid002 lost: ranks 2, 3 ended while srun saw no end of them (the node is down or cut "
    "off), so ipcmagic stopped the srun step; srun said: rank 0 exited with code 1": "torchrun node lost",
    "ipcmagic: engine 1 (MPI rank 1, pid 4242 on nid001) exited with code 3; srun then stopped the others: "
    "engine 0 (MPI rank 0, pid 4241 on nid001), engine 2 (MPI rank 2, pid 4243 on nid001) with SIGKILL. "
    "%ipcluster restart starts all engines anew.": "lost engine",
    "ipcmagic: engine 1 (MPI rank 1, pid 4242 on nid001) exited with code 3; srun then stopped the "
    "others: ...": "lost engine",
    "EnginesLost: engine 1 ... %ipcluster restart starts all engines anew.": "engines lost",
    "ipcmagic: engine 2 (MPI rank 2, pid 4242 on nid002), engine 3 (...) stopped answering heartbeats while "
    "srun saw no end (the node is unreachable); engine 0 (...), engine 1 (...) were stopped by ipcmagic "
    "with the srun step.": "node lost",
    "EnginesLost: engine 1 (MPI rank 1, ...) exited with code 3; ... %ipcluster restart starts all engines "
    "anew.": "engines lost",
    "ipcmagic: engine 1 (MPI rank 1, pid 4242 on nid001) failed while engines 0, 2, 3 still ran; they did "
    "not stop on SIGINT within 1 s (ranks waiting in MPI for a failed rank never return), so all 4 engines "
    "are being restarted: their variables are gone.": "failed fast",
    "ipcmagic: engines 0, 2 still ran after engine 1 was lost; they were interrupted (KeyboardInterrupt) and "
    "keep their variables.": "lost, the others ended",
    "ipcmagic: engine 1 (pid 4242 on nid001) exited with code 3. %px runs on engines 0, 2 from now on; "
    "%ipcluster restart --lost replaces the lost ones (%ipcluster restart: all anew).": "went on",
    "ipcmagic: engine 1 ... with SIGKILL. All 4 engines are being restarted (automatic restart 1 of 3 this "
    "hour, c.IPCluster.restart_lost_engines): their variables are gone.": "restarted by itself",
    "ipcmagic: engine 2 (MPI rank 2, pid 4242 on nid002), engine 3 (...) stopped answering heartbeats while "
    "srun saw no end (the node is unreachable); ...": "node lost",
    "ipcmagic: engines 1, 2 did not stop on SIGINT within 1 s (ranks waiting in MPI or a collective for the "
    "others never return), so all 3 engines are being restarted: their variables are gone.": (
        "interrupted, stuck"
    ),
    "UsageError: srun is not on PATH; load it ...": "not on PATH",
    "UsageError: A cluster with N ... engines is already running; stop it first": "already running",
    "KeyboardInterrupt: %ipcluster start interrupted; everything started was stopped.": "start interrupted",
    "ClusterError: The N engines are not one MPI world: they see COMM_WORLD sizes [1], not N. ...": (
        "not one world"
    ),
    "The N engines are not one MPI world": "not one world",
    "ClusterError: Starting N srun engines failed: the srun launcher exited ...": "launcher exited",
    "ClusterError: ... 2 of 4 engines registered within 60 s": "registered within",
    "N engines with C CPU(s) each need N×C CPUs, but this allocation has T": "too many CPUs",
    "ClusterError: 2 engines on vm need 4 GPUs, but CUDA_VISIBLE_DEVICES there lists 3 (0,1,2); use "
    "fewer engines or --gpus-per-engine.": "too few GPUs",
    "UsageError: <what is wrong and what to do>": None,  # the form of every UsageError, no message
}


def quotes() -> set[str]:
    found = set()
    for page in PAGES:
        text = page.read_text()
        found |= {" ".join(q.split()) for q in _QUOTE.findall(text)}  # as one line, however wrapped
        found |= {q for q in _HEADING.findall(text) if re.search(r"\b[A-Z]\b", q)}  # a message, not a command
    return found


def template(quote: str) -> re.Pattern:
    """The quote as a pattern: ``...``/``<...>`` any text, a lone capital (``N``, ``N×C``) a value."""
    pattern = re.escape(quote)
    pattern = re.sub(r"\\\.\\\.\\\.|<[^>]*>", ".*", pattern)
    pattern = re.sub(r"\b[A-Z](?:×[A-Z])?\b", r"\\S+", pattern)
    return re.compile(pattern)


def test_every_quote_has_a_case():
    assert sorted(quotes() - CASES.keys()) == []


@pytest.mark.parametrize("quote", sorted(q for q, case in CASES.items() if case))
def test_the_quote_is_what_the_code_says(quote, monkeypatch):
    said = messages(monkeypatch)[CASES[quote]]
    pattern = template(quote)  # a quote with its error's name from the start, a heading anywhere
    found = pattern.match(said) if _QUOTE.fullmatch(f"`{quote}`") else pattern.search(said)
    assert found, f"{quote!r} is not what the code says: {said!r}"
