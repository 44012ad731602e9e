"""``%ipcluster status --watch``: each engine's CPU, memory and GPU use in a table that refreshes
(an ipywidgets HTML widget in Jupyter, text in a terminal) until the cluster stops; after a restart
it follows the new engines.
The engines are sampled from outside (:mod:`.usage`): in the kernel for those on its node, by one
``srun --overlap`` collector task per other node; a watch costs the engines nothing, and its
collector step ends with it."""

from __future__ import annotations

import html
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from IPython.core.getipython import get_ipython
from IPython.display import HTML, display

from ..base.slurm import step_env
from . import usage
from .status import text_table

#: seconds between refreshes
INTERVAL = 2.0
#: what runs a collector: ``python -c`` this
COLLECTOR = ["-c", Path(usage.__file__).read_text()]
COLUMNS = ("engine", "rank", "host", "state", "CPU %", "RSS", "GPU %", "GPU memory")


class EngineUsage:
    """The usage of the engines of ``rows`` (their host and pid), sampled on demand here, and
    pushed every ``interval`` by a collector step on the other nodes of ``job_id``."""

    def __init__(self, rows: list[dict[str, Any]], job_id: str | None, name: str, interval: float) -> None:
        here = socket.gethostname()
        self.local = usage.Sampler([row["pid"] for row in rows if row["host"] == here])
        self.nvml = {here: bool(self.local.nvml)}
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}
        others = sorted({row["host"] for row in rows if row["host"] != here})
        self.collector = _collector(rows, others, job_id, name, interval) if others and job_id else None
        if self.collector:
            threading.Thread(target=self._read, args=(self.collector,), daemon=True).start()

    def _read(self, collector: subprocess.Popen) -> None:
        for line in collector.stdout:
            try:
                said = json.loads(line)
            except ValueError:
                continue  # srun's own words
            self.nvml[said["host"]] = said["nvml"]
            self.latest.update({(said["host"], int(pid)): use for pid, use in said["usage"].items()})

    def sample(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Each engine's latest usage, by (host, pid); this node's sampled now."""
        here = socket.gethostname()
        self.latest.update({(here, pid): use for pid, use in self.local.sample().items()})
        return dict(self.latest)

    def close(self) -> None:
        """End the collector step: its stdin closes, so each task ends; then srun is gone."""
        if self.collector is None:
            return
        self.collector.stdin.close()
        try:
            self.collector.wait(5)
        except subprocess.TimeoutExpired:
            self.collector.kill()
            self.collector.wait()


def _collector(
    rows: list[dict[str, Any]], hosts: list[str], job_id: str, name: str, interval: float
) -> subprocess.Popen:
    """One collector task on each of ``hosts``, in a step of the job, told the engines' host:pid."""
    engines = [f"{row['host']}:{row['pid']}" for row in rows if row["host"] in hosts]
    argv = [
        "srun",
        "--overlap",
        f"--jobid={job_id}",
        f"--nodelist={','.join(hosts)}",
        f"--nodes={len(hosts)}",
    ]
    argv += ["--ntasks-per-node=1", "--input=all", "--mpi=none", f"--job-name={name}", "--quiet"]
    argv += [sys.executable, *COLLECTOR, str(interval), *engines]
    env = step_env(os.environ)
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
    return subprocess.Popen(argv, env=env, text=True, **pipes)


def table_rows(roster: dict[int, dict[str, Any]], sampled: dict, gone: set[int]) -> list[list[str]]:
    """A row of cells per engine: id, rank, host, state, CPU %, RSS, GPU %, GPU memory."""
    rows = []
    for engine, row in sorted(roster.items()):
        use = sampled.get((row["host"], row["pid"]))
        state = "gone" if engine in gone or use == usage.GONE else "alive" if use else "-"
        use = use or usage.GONE
        rows.append(
            [
                str(engine),
                "-" if row["rank"] is None else str(row["rank"]),
                row["host"],
                state,
                "-" if use["cpu"] is None else f"{use['cpu']:.0f}",
                _size(use["rss"]),
                "-" if use["gpu"] is None else f"{use['gpu']:.0f}",
                _size(use["gpu_memory"]),
            ]
        )
    return rows


def _cell(tag: str, text: str, column: str) -> str:
    align = "left" if column in ("host", "state") else "right"
    return f'<{tag} style="text-align: {align}; padding: 0.1em 0.7em">{html.escape(text)}</{tag}>'


def _update(shown: Any, table: str) -> None:
    shown.update(HTML(table))


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


class LiveTable:
    """One ``%ipcluster status --watch``: refreshes until :meth:`stop`; ``gone`` says which engines
    the cluster knows to be lost."""

    def __init__(
        self,
        roster: dict[int, dict[str, Any]],
        sampler: EngineUsage,
        gone: Callable[[], set[int]],
        interval: float = INTERVAL,
    ) -> None:
        self.roster, self.sampler, self.gone, self.interval = dict(roster), sampler, gone, interval
        self.stopped = threading.Event()
        self.ended = ""  # why it stopped
        self.rows: list[list[str]] = []  # the last table's

    def caption(self) -> str:
        missing = sorted(host for host, has in self.sampler.nvml.items() if not has)
        nvml = f"; GPU columns: no NVML on {', '.join(missing)}" if missing else ""
        return f"every {self.interval:g} s{nvml}"

    def refresh(self) -> None:
        """Sample the engines for the next table."""
        self.rows = table_rows(self.roster, self.sampler.sample(), self.gone())

    def html(self) -> str:
        """The table as HTML, numbers to the right (a widget's HTML gets no notebook styles)."""
        head = "".join(_cell("th", heading, heading) for heading in COLUMNS)
        body = "".join(
            "<tr>" + "".join(_cell("td", c, h) for c, h in zip(row, COLUMNS, strict=True)) + "</tr>"
            for row in self.rows
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f"{table}<p><small>{html.escape(self.ended or self.caption())}</small></p>"

    def text(self) -> str:
        return "\n".join([*text_table([list(COLUMNS), *self.rows]), self.ended or self.caption()])

    def show(self) -> None:
        """In Jupyter, a table that refreshes in the background: an ipywidgets HTML widget (its
        updates reach the notebook by the widget's comm, whatever cell runs), or without
        ipywidgets a display that is updated; elsewhere text, until the cluster stops or the user
        interrupts."""
        if getattr(get_ipython(), "kernel", None) is None:
            self._print()
            return
        self.refresh()
        try:
            from ipywidgets import HTML as Widget

            widget = Widget(self.html())
            display(widget)
            update = partial(setattr, widget, "value")
        except ImportError:
            update = partial(_update, display(HTML(self.html()), display_id=True))
        threading.Thread(target=self._refresh, args=(update,), daemon=True, name="ipcmagic-watch").start()

    def _refresh(self, update: Callable[[str], None]) -> None:
        while not self.stopped.wait(self.interval):
            self.refresh()
            update(self.html())
        update(self.html())  # the last table, saying why it ended

    def _print(self) -> None:
        try:
            while not self.stopped.is_set():
                self.refresh()
                print(self.text(), end="\n\n", flush=True)
                self.stopped.wait(self.interval)
            print(self.ended, flush=True)
        except KeyboardInterrupt:
            self.stop("")
        finally:
            self.sampler.close()

    def follow(self, roster: dict[int, dict[str, Any]], sampler: EngineUsage) -> None:
        """Watch the engines of ``roster`` from now on (a restart's), sampled by ``sampler``."""
        before, self.sampler, self.roster = self.sampler, sampler, dict(roster)
        before.close()

    def stop(self, why: str) -> None:
        """End the watch, saying ``why`` under the last table, and its collector step."""
        self.ended = why
        self.stopped.set()
        self.sampler.close()
