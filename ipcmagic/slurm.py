"""The Slurm allocation this kernel runs in: its ``SLURM_*`` variables and hostlists."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

_BRACKET = re.compile(r"\[([^\]]*)\]")


#: srun option: ranks fill one node, then the next; a kernel that runs in a one-task step would
#: pass on that step's SLURM_DISTRIBUTION=cyclic (measured: ranks 0, 2 on n1 and 1, 3 on n2)
BLOCK = "--distribution=block"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part for part in parts if part]


def _expand_range(spec: str) -> list[str]:
    """``01-03,7`` -> ``['01', '02', '03', '7']`` (zero padding kept)."""
    values = []
    for item in spec.split(","):
        low, _, high = item.partition("-")
        if not high:
            values.append(low)
            continue
        width = len(low) if low.startswith("0") else 0
        values.extend(str(i).zfill(width) for i in range(int(low), int(high) + 1))
    return values


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``nid[001-002,007],login1`` into host names."""
    hosts = []
    for part in _split_top_level(hostlist.strip()):
        pieces = _BRACKET.split(part)  # literal, range, literal, range, ..., literal
        choices = [[p] if i % 2 == 0 else _expand_range(p) for i, p in enumerate(pieces)]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    return hosts


def expand_counts(counts: str) -> list[int]:
    """Expand a Slurm count list such as ``4(x2),2`` into ``[4, 4, 2]``."""
    result = []
    for item in counts.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise ValueError(f"not a Slurm count list: {counts!r}")
        result.extend([int(match[1])] * int(match[2] or 1))
    return result


@dataclass(frozen=True)
class Allocation:
    """The Slurm job (allocation) a process runs in, as its environment describes it.

    Inside a job step, ``SLURM_NTASKS`` is the step's count and ``SLURM_JOB_CPUS_PER_NODE`` may be
    missing; then the job's own numbers come from ``scontrol show job``.
    """

    job_id: str
    nodes: tuple[str, ...]
    #: CPUs per node if the environment tells them, else empty
    cpus_per_node: tuple[int, ...] = ()
    #: the job's task count if the environment tells it (outside a job step), else None
    env_tasks: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Allocation | None:
        """The allocation of this environment, or None outside Slurm."""
        job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
        if not job_id:
            return None
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        cpus = env.get("SLURM_JOB_CPUS_PER_NODE", "")
        in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
        ntasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS")
        return cls(
            job_id=job_id,
            nodes=tuple(expand_hostlist(nodelist)),
            cpus_per_node=tuple(expand_counts(cpus)) if cpus else (),
            env_tasks=int(ntasks) if ntasks and not in_step else None,
        )

    def _scontrol(self, field: str) -> int:
        out = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", self.job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        match = re.search(rf"\b{field}=(\d+)", out)
        if not match:
            raise RuntimeError(f"scontrol show job {self.job_id} did not report {field}")
        return int(match[1])

    @property
    def cpus(self) -> int:
        """CPUs of the whole allocation."""
        return sum(self.cpus_per_node) if self.cpus_per_node else self._scontrol("NumCPUs")

    def tasks(self) -> int:
        """The job's task count."""
        return self.env_tasks if self.env_tasks is not None else self._scontrol("NumTasks")
