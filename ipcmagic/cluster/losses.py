"""Engines that ended while the cluster runs: noticed at once, told to the controller, said plainly.

ipyparallel learns that an engine is gone from its nanny (when the engine process alone exits) or
from missed heartbeats (``heartbeat_tolerance``, 10 s). When Slurm or MPI ends the whole step,
the nannies go with it, so a running ``%%px`` waited the full tolerance. ipcmagic follows its
engine launchers instead: when srun or mpirun exits, or a local engine does, the launcher's
``on_stop`` callback tells the controller that those engines are gone (as a nanny would), so the
client fails their work at once, and keeps how each ended in the launcher's own words
(:mod:`ipcmagic.base.exits`). Heartbeats remain for what no launcher sees: a frozen engine, a hung node.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..base.exits import by_returncode, first_heard_first, rank_exits, sentence
from ..base.internals import fits, parameters

log = logging.getLogger(__name__)

#: how an engine ended that no launcher reported, whose process on this node lives: the
#: controller's heartbeats lost it
UNHEARD = "stopped answering heartbeats (frozen, or its node is unreachable)"
#: the same, on another node: its nanny or the heartbeats told the controller
LOST_ELSEWHERE = "was lost (it ended, or stopped answering heartbeats)"
#: how an engine on another node ended that the controller let go while the other engines of its
#: node answered: that engine alone is frozen (stopped, in a debugger) or ended
STALLED_ELSEWHERE = "stopped answering heartbeats while the others on {host} answered (frozen, or it ended)"
#: how engines of a step on another node ended that stopped answering heartbeats while their
#: launcher saw no end of them: their node died or is cut off
NODE_LOST = "stopped answering heartbeats while {step} saw no end (the node is unreachable)"
#: how the others of that step ended: ipcmagic stopped it, so that none waits for them in MPI
STEP_STOPPED = "was stopped by ipcmagic with the {step} step"
#: how long ipcmagic waits for the launcher's word on an engine the controller let go
LAUNCHER_WORD = 0.5
#: the report number of an end no launcher reported: after all that were
UNREPORTED = 1 << 30
#: the report number of a lost node's engines: before all that the launcher made
NODE_REPORT = -1


class EnginesLost(RuntimeError):
    """Engines of the cluster ended; the message says which, how, and what to do."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def describe_engines(rows: list[dict[str, Any]]) -> str:
    """``engine 1 (MPI rank 1, pid 4242 on nid001), ...`` (no rank for engines without MPI)."""

    def one(e: dict[str, Any]) -> str:
        rank = "" if e["rank"] is None else f"MPI rank {e['rank']}, "
        return f"engine {e['id']} ({rank}pid {e['pid']} on {e['host']})"

    return ", ".join(map(one, rows))


def names(ids: list[int]) -> str:
    """``engine 3`` or ``engines 0, 2, 3``."""
    return f"engine{'s' if len(ids) != 1 else ''} {', '.join(map(str, ids))}"


def describe_loss(rows: list[dict[str, Any]], step: str | None = None) -> str:
    """How the engines of ``rows`` ended (their ``fate`` and the ``report`` that said it), those
    that ended alike together; with ``step`` (srun, mpirun), the launcher that stopped the others."""
    rows = sorted(rows, key=lambda row: row["id"])
    items = [(row, row.get("fate") or UNHEARD, row.get("report", UNREPORTED)) for row in rows]
    return sentence(items, step, describe_engines)


def lost_engines_message(rows: list[dict[str, Any]], step: str | None = None) -> str:
    """What ipcmagic says of lost engines after a failed cell, and when work is sent to them."""
    return f"{describe_loss(rows, step)}. %ipcluster restart starts all engines anew."


def tell_controller(connection_file: str, ids: list[int]) -> None:
    """Unregister engines at the controller, as each one's nanny does when its engine exits: the
    controller tells every client, which fails the engines' pending work at once."""
    import zmq
    from ipyparallel.util import connect
    from jupyter_client.session import Session

    with open(connection_file) as f:
        info = json.load(f)
    session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
    with zmq.Context.instance().socket(zmq.DEALER) as dealer:
        dealer.linger = 3000  # the messages must leave before close, but never hang a stop
        server_key = (info.get("curve_serverkey") or "").encode()  # encrypted: as a client connects
        connect(dealer, f"{info['interface']}:{info['registration']}", curve_serverkey=server_key or None)
        for engine_id in ids:
            session.send(dealer, "unregistration_request", content={"id": engine_id})


class Follower:
    """Follows the launchers of one start of the engines; ``fates`` says how each engine ended:
    engine id -> (the number of the launcher's report that said so, its words)."""

    def __init__(self, roster: dict[int, dict[str, Any]], connection_file: str, step: str | None) -> None:
        self.roster = roster
        self.connection_file = connection_file
        self.step = step  # srun or mpirun: one launcher for all engines; None: one per engine
        self.launchers: list[Any] = []
        self.fates: dict[int, tuple[int, str]] = {}
        self.following = True
        self.let_go: set[int] = set()  # engines of other nodes that the controller let go
        self.heard: dict[int, float] = {}  # MPI rank -> when the controller let its engine go
        self.lock = threading.Lock()
        self.client: Any = None

    def follow(self, launchers: list[Any], client: Any) -> None:
        """Call :meth:`ended` when each launcher's process exits (at once if it already has), and
        :meth:`unregistered` when the controller lets an engine go."""
        self.launchers = launchers
        for launcher in launchers:
            launcher.on_stop(partial(self.ended, launcher))
        callbacks = getattr(client, "_registration_callbacks", None)
        if fits("Client._registration_callbacks", isinstance(callbacks, list), "it is no list"):
            self.client = client
            callbacks.append(self.unregistered)

    def forget(self) -> None:
        """The engines are being stopped on purpose: their ends are no loss."""
        self.following = False
        if self.client is not None and self.unregistered in self.client._registration_callbacks:
            self.client._registration_callbacks.remove(self.unregistered)

    def unregistered(self, event: dict[str, Any]) -> None:
        """The controller let an engine go (in the client's thread). If it ran on another node in a
        step whose launcher does not say it ended, :meth:`stop_lost_step` follows."""
        i = event.get("id")
        if event.get("event") == "unregister" and i in self.roster and self.roster[i]["rank"] is not None:
            self.heard.setdefault(self.roster[i]["rank"], time.monotonic())  # its nanny told first
        if (
            event.get("event") == "unregister"
            and self.step
            and i in self.roster
            and not on_this_node(self.roster[i])
        ):
            self.let_go.add(i)
            threading.Timer(LAUNCHER_WORD, self.stop_lost_step).start()

    def stop_lost_step(self) -> None:
        """Engines of another node were let go while their launcher saw no end of them. Where
        another engine of their node still answers, the node is fine: those engines alone are
        lost. Else the node died or is cut off: stop the step, as Slurm does on a node failure, so
        that the other ranks do not wait for them in MPI forever, and fail the work of all at once."""
        with self.lock:
            if not self.following:
                return
            self._learn_so_far()
            lost = [i for i in self.let_go if i not in self.fates]
            registered = (set(self.client.ids) - self.let_go) & self.roster.keys()
            answering = {self.roster[i]["host"] for i in registered if i not in self.fates}
            for i in [i for i in lost if self.roster[i]["host"] in answering]:
                lost.remove(i)
                self.fates[i] = (UNREPORTED - 2, STALLED_ELSEWHERE.format(host=self.roster[i]["host"]))
            if not lost:
                return
            self.fates.update(dict.fromkeys(lost, (NODE_REPORT, NODE_LOST.format(step=self.step))))
            others = [i for i in self.roster if i not in self.fates]
            self.fates.update(dict.fromkeys(others, (UNREPORTED - 1, STEP_STOPPED.format(step=self.step))))
        for launcher in self.launchers:
            launcher.signal(signal.SIGTERM)
        self._tell(others)

    def ended(self, launcher: Any, stop_data: dict[str, Any] | None) -> None:
        """A launcher's process exited (in ipyparallel's event loop thread): every engine it ran
        ended; tell the controller."""
        if not self.following:
            return
        code = (stop_data or {}).get("exit_code") or 0
        if self.step:
            self._learn(output_so_far(launcher))
            with_step = f"ended with the {self.step} step ({self.step} {by_returncode(code)})"
            ended = dict.fromkeys(self.roster, (UNREPORTED - 1, with_step))
        else:  # each local engine's end is a report of its own
            pid = (stop_data or {}).get("pid")
            ended = {
                i: (len(self.fates), by_returncode(code))
                for i, row in self.roster.items()
                if row["pid"] == pid
            }
        for i, fate in ended.items():
            self.fates.setdefault(i, fate)
        self._tell(list(ended))

    def _tell(self, ids: list[int]) -> None:
        """Tell the controller that engines ``ids`` are gone (those it already let go it ignores)."""
        try:
            tell_controller(self.connection_file, ids)
        except Exception as e:  # the heartbeats will tell it, later
            log.debug("could not unregister engines %s: %s", ids, e)

    def _learn(self, output: str) -> None:
        """The fates the step's launcher has reported so far (srun says ``task 1: Exited ...`` as
        the task ends, also when the step goes on), the first heard to end first: each read
        numbers all reports anew, so a later report of the first to end comes first."""
        by_rank = {row["rank"]: i for i, row in self.roster.items()}
        for report, end in enumerate(first_heard_first(rank_exits(output), self.heard)):
            for rank in end.ranks:
                i = by_rank.get(rank)
                if i is not None and 0 <= self.fates.get(i, (0,))[0] < UNREPORTED - 2:  # a report's
                    self.fates[i] = (report, end.how)

    def _learn_so_far(self) -> None:
        """The fates that the launchers of the step have reported until now."""
        self._learn("\n".join(map(output_so_far, self.launchers)))

    def known_dead(self) -> set[int]:
        """The engines known to be dead before the controller's heartbeats tell: those whose
        launcher reported their end, and those whose process on this node is gone."""
        return set(self.fates) | {
            i for i, row in self.roster.items() if on_this_node(row) and not process_alive(row["pid"])
        }

    def rows(self, lost: set[int]) -> list[dict[str, Any]]:
        """The roster's rows of ``lost`` engines, each with its ``fate`` and ``report``."""
        if self.step:
            self._learn_so_far()
        rows = [dict(row) for i, row in self.roster.items() if i in lost]
        for row in rows:
            row["report"], row["fate"] = self.fates.get(row["id"], (UNREPORTED, self._unreported(row)))
        return rows

    def _unreported(self, row: dict[str, Any]) -> str:
        """How an engine ended that its launcher did not (yet) report."""
        if not on_this_node(row):
            return LOST_ELSEWHERE
        if process_alive(row["pid"]):
            return UNHEARD
        return f"ended with the {self.step} step" if self.step else "exited"


def output_so_far(launcher: Any) -> str:
    """What a launcher printed so far: ipyparallel's ``get_output()`` keeps its first read for
    good, so while the process runs its file is read instead."""
    try:
        return Path(launcher.output_file).read_text(errors="replace")
    except (AttributeError, TypeError, OSError):  # no file, or removed once the process ended
        return launcher.get_output()


def on_this_node(row: dict[str, Any]) -> bool:
    """Whether the engine of ``row`` runs on this node."""
    return row["host"] == socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def guard_targets(
    client: Any,
    lost: Callable[[], list[dict[str, Any]]],
    said: Callable[[list[dict[str, Any]]], str],
    settle: Callable[[], None],
) -> None:
    """Work sent to engines waits for a restart begun (``settle``), and to engines that are gone
    raises :class:`EnginesLost` saying which and how (``said``), where ipyparallel raises a bare
    ``KeyError: 1`` (a view keeps the ids it was made with) or ``NoEnginesRegistered``.

    Reaches into ``Client._build_targets``, through which every view sends; if ipyparallel no
    longer has it, its own errors stay.
    """
    from ipyparallel.error import NoEnginesRegistered

    build = getattr(client, "_build_targets", None)
    if not fits("Client._build_targets", parameters(build) == ["targets"], "its signature changed"):
        return

    def _build_targets(targets: Any) -> Any:
        settle()
        try:
            return build(targets)
        except (KeyError, NoEnginesRegistered):
            rows = lost()
            if not rows:
                raise
            raise EnginesLost(said(rows)) from None

    client._build_targets = _build_targets
