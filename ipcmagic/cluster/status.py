"""What ``%ipcluster status`` shows: the cluster, and a row per engine, as text or an HTML table."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

#: (heading, row key) of the engine table
COLUMNS = (
    ("engine", "id"),
    ("state", "state"),
    ("rank", "rank"),
    ("host", "host"),
    ("pid", "pid"),
    ("CPUs", "cpus"),
    ("CUDA_VISIBLE_DEVICES", "gpus"),
)


def cpu_ranges(cpus: set[int]) -> str:
    """``{0, 1, 2, 3, 8}`` as ``0-3,8``."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclass
class ClusterStatus:
    """A snapshot of one kernel's cluster; Jupyter shows it as a table, a terminal as text."""

    cluster_id: str
    launcher: str
    n: int
    uptime: float
    controller_alive: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)
    connection_file: str = ""
    #: what else holds this job's CPUs and GPUs, a line each (:mod:`ipcmagic.base.holders`)
    holders: list[str] = field(default_factory=list)

    @property
    def steps(self) -> str:
        return ", ".join(sorted({row["step"] for row in self.rows if row["step"]}))

    def headline(self) -> str:
        step = f", Slurm step {self.steps}" if self.steps else ""
        return f"cluster {self.cluster_id}: {self.launcher}, {self.n} engines{step}, up {self.uptime:.0f} s"

    def elsewhere(self) -> str:
        """How another process of the user on this node connects (a plain Client() there cannot)."""
        return f"other processes on this node: ipyparallel.Client({self.connection_file!r})"

    def advice(self) -> str:
        if not self.controller_alive:
            return "The controller has died; run %ipcluster stop, then %ipcluster start."
        gone = [row for row in self.rows if row["state"] == "gone"]
        if gone:
            return f"{len(gone)} engine(s) are gone; %ipcluster restart starts all {self.n} anew."
        return ""

    @property
    def columns(self) -> list[tuple[str, str]]:
        """The columns some engine has a value for (no CUDA_VISIBLE_DEVICES on CPU nodes)."""
        return [
            (heading, key) for heading, key in COLUMNS if any(row[key] not in (None, "") for row in self.rows)
        ]

    def cells(self) -> list[list[str]]:
        columns = self.columns
        return [["-" if row[key] is None else str(row[key]) for _, key in columns] for row in self.rows]

    def __str__(self) -> str:
        headings = [heading for heading, _ in self.columns]
        alive = [*text_table([headings, *self.cells()]), self.elsewhere()] if self.controller_alive else []
        return "\n".join([self.headline(), *alive, *self.holders, self.advice()]).rstrip()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(heading)}</th>" for heading, _ in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.cells()
        )
        alive = (
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p><small>{html.escape(self.elsewhere())}</small></p>"
            if self.controller_alive
            else ""
        )
        advice = f"<p><b>{html.escape(self.advice())}</b></p>" if self.advice() else ""
        holders = "".join(f"<p>{html.escape(line)}</p>" for line in self.holders)
        return f"<p>{html.escape(self.headline())}</p>{alive}{holders}{advice}"


#: the numeric columns, aligned to the right
_NUMERIC = {"engine", "rank", "pid"}


def text_table(lines: list[list[str]]) -> list[str]:
    """Aligned columns; the numeric ones (engine, rank, pid) to the right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    right = [heading in _NUMERIC for heading in lines[0]]
    return [
        "  ".join(
            cell.rjust(width) if right[i] else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
