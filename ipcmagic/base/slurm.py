"""The Slurm allocation this kernel runs in: its ``SLURM_*`` variables and hostlists."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

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


def require_full_export(args: list[str], option: str) -> None:
    """UsageError for an srun ``--export`` in ``args`` (given as ``option``) that would not pass the
    kernel's whole environment: the steps need it (ipcmagic's connection details, PATH, the venv),
    and without it they fail only after the start's timeout, or a rank cannot reach the kernel."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--export=") else None
        if arg == "--export" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and value.split(",")[0].upper() != "ALL":
            raise UsageError(
                f"{option} has --export={value}, which keeps the kernel's environment from the step "
                "(ipcmagic's connection details, PATH, the virtual environment); leave --export out, "
                f"or add variables with --export=ALL,{value.removeprefix('NONE').strip(',') or 'NAME=value'}."
            )


#: variables that make a process a task of the step it runs in: its rank and its PMIx/PMI server.
#: An MPI library that finds them in a child joins the *kernel's* step (MPICH aborts, seeing two
#: PMI flavours; a rank that then fails makes Slurm end the kernel's step). Site tunables
#: (``PMIX_MCA_*``, Cray's ``PMI_*`` knobs) are not among them.
STEP_IDENTITY_VARS = frozenset(
    {
        *("SLURM_STEPID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_GTIDS", "SLURM_TASK_PID"),
        *("SLURM_SRUN_COMM_HOST", "SLURM_SRUN_COMM_PORT", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_TASKS_PER_NODE"),
        *("SLURM_NODELIST", "SLURM_PMIXP_ABORT_AGENT_PORT", "SLURM_PMIX_MAPPING_SERV"),
        *("PMI_FD", "PMI_PORT", "PMI_RANK", "PMI_SIZE", "PMI_JOBID", "PMI_ID", "PMI_SPAWNED", "PMI_APPNUM"),
        *("PMI_LOCAL_RANK", "PMI_LOCAL_SIZE", "PMI_UNIVERSE_SIZE", "PMI_CONTROL_PORT", "PMI_SHARED_SECRET"),
    }
)


def is_foreign(name: str) -> bool:
    """Whether a variable must not pass from the kernel to one of ipcmagic's steps or engines:
    one of :data:`FOREIGN_STEP_VARS` or :data:`STEP_IDENTITY_VARS`, a ``SLURM_STEP_*`` variable, or
    a PMIx server's ``PMIX_*`` (but not the ``PMIX_MCA_*`` tunables)."""
    return (
        name in FOREIGN_STEP_VARS
        or name in STEP_IDENTITY_VARS
        or name.startswith("SLURM_STEP_")
        or (name.startswith("PMIX_") and not name.startswith("PMIX_MCA_"))
    )


def step_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for an srun that starts one of ipcmagic's steps, less what :func:`is_foreign` names."""
    return {name: value for name, value in env.items() if not is_foreign(name)}


def env_prefix(env: Mapping[str, str], setting: Mapping[str, str] | None = None) -> list[str]:
    """An ``env --unset=NAME ... NAME=VALUE ...`` prefix for a command that inherits ``env``: it drops
    the foreign variables (:func:`is_foreign`) and sets ``setting`` (empty when there is nothing to do)."""
    setting = setting or {}
    unset = [f"--unset={name}" for name in sorted(env) if is_foreign(name) and name not in setting]
    assign = [f"{name}={value}" for name, value in setting.items()]
    return ["env", *unset, *assign] if unset or assign else []


def as_allocation(env: Mapping[str, str]) -> dict[str, str]:
    """What an MPI launcher (Open MPI's mpirun, MPICH's mpiexec) must see in a job step to use the
    whole allocation, as in the job's batch script: the job's nodes and CPUs as its slots, and
    ``--overlap`` without PMI for the ``srun`` that starts its daemons on the other nodes (without
    it that srun waits forever while the kernel's step holds the CPUs). Empty outside Slurm."""
    if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
        return {}
    setting = {"SLURM_OVERLAP": "1", "SLURM_MPI_TYPE": "none"}
    job = {"SLURM_NODELIST": "SLURM_JOB_NODELIST", "SLURM_NNODES": "SLURM_JOB_NUM_NODES"}
    job["SLURM_TASKS_PER_NODE"] = "SLURM_JOB_CPUS_PER_NODE"  # MPICH's mpiexec reads all three
    setting.update({name: env[source] for name, source in job.items() if env.get(source)})
    return setting


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


#: seconds a Slurm query may take (slurmctld may be down or busy)
SLURM_TIMEOUT = 10
#: the job's resources on some of its nodes, in ``scontrol show job --details``
_NODE_GRES = re.compile(r"\bNodes=(\S+) CPU_IDs=\S* Mem=\S* GRES=(\S*)")
#: a GPU count in a GRES list: ``gpu:4(IDX:0-3)``, ``gpu:a100:2(IDX:0-1)``
_GPUS = re.compile(r"\bgpu(?::[^:,(\s]+)?:(\d+)")
#: what scontrol says of a job it does not know
_INVALID_JOB = re.compile(r"Invalid job id", re.IGNORECASE)


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
    #: whether this process runs in a job step (not in the batch script or an salloc shell)
    in_step: bool = False

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
            in_step=in_step,
        )

    @property
    def has_task_count(self) -> bool:
        """Whether the job's tasks say how many processes it runs: it was given a task count, or
        this process runs in one of its steps. Not so in the batch script of ``--nodes`` alone
        (a whole-node session, as CSCS's spawner starts JupyterLab), where Slurm counts one task
        per node."""
        return self.in_step or self.env_tasks is not None

    @cached_property
    def _shown(self) -> str:
        """``scontrol show job --details`` of this job, on one line; asked once per Allocation
        (one is made for each start or run), however many of its numbers are read."""
        command = ["scontrol", "show", "job", "--details", "--oneliner", self.job_id]
        try:
            shown = subprocess.run(command, capture_output=True, text=True, timeout=SLURM_TIMEOUT)
        except subprocess.TimeoutExpired:
            shown = subprocess.CompletedProcess(command, 1, "", f"no answer within {SLURM_TIMEOUT} s")
        if shown.returncode and not _INVALID_JOB.search(shown.stderr):
            raise UsageError(
                f"Slurm did not answer 'scontrol show job {self.job_id}' ({shown.stderr.strip()}): "
                "slurmctld is down or busy. Try again in a moment."
            )
        if shown.returncode:
            raise UsageError(
                f"Slurm does not know job {self.job_id} of this kernel's SLURM_JOB_ID "
                f"({shown.stderr.strip()}): the job has ended or the variable is stale. Start the kernel "
                "in a running job, or choose -n and --launcher local."
            )
        return shown.stdout

    def _scontrol(self, field: str) -> int:
        match = re.search(rf"\b{field}=(\d+)", self._shown)
        if not match:
            raise RuntimeError(f"scontrol show job {self.job_id} did not report {field}")
        return int(match[1])

    @property
    def cpus(self) -> int:
        """CPUs of the whole allocation."""
        return sum(self.cpus_per_node) if self.cpus_per_node else self._scontrol("NumCPUs")

    def node_cpus(self) -> dict[str, int]:
        """The job's CPUs on each of its nodes (as many on each, where the environment does not say)."""
        each = self.cpus_per_node or [self.cpus // len(self.nodes)] * len(self.nodes)
        return dict(zip(self.nodes, each, strict=True))

    def tasks(self) -> int:
        """The job's task count."""
        return self.env_tasks if self.env_tasks is not None else self._scontrol("NumTasks")

    def gpus_per_node(self) -> dict[str, int]:
        """The GPUs the job holds on each of its nodes (GRES ``gpu``, of any type)."""
        gpus = dict.fromkeys(self.nodes, 0)
        for nodes, gres in _NODE_GRES.findall(self._shown):
            count = sum(int(n) for n in _GPUS.findall(gres))
            gpus.update(dict.fromkeys(expand_hostlist(nodes), count))
        return gpus
