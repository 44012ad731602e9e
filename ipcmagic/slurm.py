"""The Slurm allocation this kernel runs in: its ``SLURM_*`` variables and hostlists."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from IPython.core.error import UsageError

_BRACKET = re.compile(r"\[([^\]]*)\]")


#: srun option: ranks fill one node, then the next; a kernel that runs in a one-task step would
#: pass on that step's SLURM_DISTRIBUTION=cyclic (measured: ranks 0, 2 on n1 and 1, 3 on n2)
BLOCK = "--distribution=block"


#: srun's input variables (srun(1), INPUT ENVIRONMENT VARIABLES) that would shape ipcmagic's steps
#: after another step: the job's batch script leaves them (batchspawner's ``--export={{keepvars}}``
#: sets SLURM_EXPORT_ENV, which makes every srun export only that list), and so does the kernel's
#: own step (its CPU mask, task counts, GPUs). ipcmagic's steps get their shape from ipcmagic's
#: options alone; what names the allocation (SLURM_JOB_ID, SLURM_CONF, SLURM_JOB_NUM_NODES) and
#: site policy (SLURM_MPI_TYPE, SRUN_CONTAINER, SLURM_ACCOUNT, ...) still reach srun.
FOREIGN_STEP_VARS = frozenset(
    {
        # what the tasks get: only the listed variables, the output in files, stdin from a file
        *("SLURM_EXPORT_ENV", "SRUN_EXPORT_ENV", "SLURM_STDOUTMODE", "SLURM_STDERRMODE"),
        *("SLURM_STDINMODE", "SLURM_OPEN_MODE", "SLURM_LABELIO", "SLURM_WORKING_DIR"),
        # the step's shape and placement
        *("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NNODES", "SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK"),
        *("SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_SOCKET", "SLURM_NTASKS_PER_CORE"),
        *("SLURM_DISTRIBUTION", "SLURM_DIST_PLANESIZE", "SLURM_SPREAD_JOB", "SLURM_EXCLUSIVE"),
        *("SLURM_EXACT", "SLURM_THREADS_PER_CORE", "SLURM_HINT"),
        # binding
        *("SLURM_CPU_BIND", "SLURM_MEM_BIND", "SLURM_GPU_BIND"),
        # memory and GPUs: a step without them may use what the job has on its nodes
        *("SLURM_MEM_PER_CPU", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_GPU", "SLURM_GPUS", "SLURM_GRES"),
        *("SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK", "SLURM_CPUS_PER_GPU", "SLURM_NTASKS_PER_GPU"),
        *("SLURM_STEP_GRES", "SLURM_TRES_PER_TASK"),
    }
)


def step_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for an srun that starts one of ipcmagic's steps: without :data:`FOREIGN_STEP_VARS`."""
    return {name: value for name, value in env.items() if name not in FOREIGN_STEP_VARS}


def without_foreign_step_vars(env: Mapping[str, str]) -> list[str]:
    """An ``env -u NAME ...`` prefix that drops the :data:`FOREIGN_STEP_VARS` present in ``env``
    from a command that inherits it (empty when there are none)."""
    present = sorted(FOREIGN_STEP_VARS.intersection(env))
    return ["env", *(f"--unset={name}" for name in present)] if present else []


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


def expand_range(spec: str) -> list[str]:
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
        choices = [[p] if i % 2 == 0 else expand_range(p) for i, p in enumerate(pieces)]
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
        shown = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", self.job_id], capture_output=True, text=True, timeout=30
        )
        if shown.returncode:
            raise UsageError(
                f"Slurm does not know job {self.job_id} of this kernel's SLURM_JOB_ID "
                f"({shown.stderr.strip()}): the job has ended or the variable is stale. Start the kernel "
                "in a running job, or choose -n and --launcher local."
            )
        out = shown.stdout
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
