"""Who else holds this allocation's CPUs and GPUs: the other running steps of this job (Slurm's
``scontrol show step``), among them other notebooks' ipcmagic clusters and ``%%torchrun`` runs,
other notebooks' local clusters on this node (their controllers), and other processes of this
user on this node's GPUs (NVML, where there). A step is told by its name
(``ipcmagic-<cluster id>``, ``ipcmagic-torchrun-<kernel pid>``); its notebook is found from the
``srun`` that runs it (``SrunHost:Pid``): the process above it, whose ``JPY_SESSION_NAME`` (set by
Jupyter) names the notebook. Only this user's processes are read (psutil, /proc)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from .gpus import gpu_processes

#: the parts of a step in ``scontrol show step --oneliner``
_STEP = re.compile(
    r"StepId=(?P<job>\d+)\.(?P<step>\d+) .*?StartTime=(?P<start>\S+) .*?State=RUNNING .*?"
    r"NodeList=(?P<nodes>\S+) .*?Tasks=(?P<tasks>\d+) Name=(?P<name>\S+) .*?TRES=(?P<tres>\S+)"
    r".*? SrunHost:Pid=(?P<host>[^:\s]+):(?P<pid>\d+)"
)
_GPUS = re.compile(r"gres/gpu=(\d+)")
#: seconds Slurm has to list the steps: a start does not wait longer for a courtesy (slurmctld down)
SLURM_WAIT = 2
#: the name of the steps that sample engines' usage for a watch (:mod:`ipcmagic.cluster.livetable`)
USAGE_STEP = "ipcmagic-usage-"
#: programs whose command lines name the engines they start
LAUNCHERS = frozenset({"srun", "mpirun", "mpiexec", "prterun", "env"})


@dataclass(frozen=True)
class Holder:
    """Something else that holds CPUs or GPUs where this kernel's engines or ranks will run."""

    #: who: "another notebook of yours (train.ipynb)", "step 123.4 (python) of this job"
    who: str
    #: what: "4 engines", "a %%torchrun run of 8 ranks"
    what: str
    #: where: "on 4 GPUs of n[1-2]"
    where: str
    #: when it started (seconds since the epoch)
    since: float

    def line(self, now: float | None = None) -> str:
        minutes = round(((now or time.time()) - self.since) / 60)
        ago = f"{minutes} min ago" if minutes else "just now"
        return f"{self.who} holds {self.what} {self.where} (started {ago})"


def holders(job_id: str | None, mine: Iterable[str] = ()) -> list[Holder]:
    """Who else holds this job's resources, and other notebooks' local clusters on this node;
    ``mine``: the IPP_CLUSTER_IDs of this kernel's own clusters, left out."""
    processes = _my_processes()
    found = _steps(job_id, processes) if job_id else []
    return found + _local_clusters(processes, set(mine)) + _on_gpus(processes)


def _my_processes() -> dict[int, psutil.Process]:
    me = psutil.Process().username()
    return {p.pid: p for p in psutil.process_iter(["username"]) if p.info["username"] == me}


def _environ(process: psutil.Process) -> dict[str, str]:
    try:
        return process.environ()
    except (psutil.Error, OSError):
        return {}


def _mine(process: psutil.Process) -> bool:
    """Whether ``process`` is this kernel or runs under it."""
    try:
        return process.pid == os.getpid() or any(p.pid == os.getpid() for p in process.parents())
    except psutil.Error:
        return False


def _notebook(process: psutil.Process | None) -> str:
    """The notebook (or program) above ``process``: its kernel's JPY_SESSION_NAME, else its command."""
    try:
        for above in [process, *process.parents()] if process else []:
            name = _environ(above).get("JPY_SESSION_NAME")
            if name:
                return f"another notebook of yours ({os.path.basename(name)})"
        kernel = process.parent() if process else None
        return f"another process of yours (pid {kernel.pid}, {kernel.name()})" if kernel else ""
    except psutil.Error:
        return ""


def _steps(job_id: str, processes: dict[int, psutil.Process]) -> list[Holder]:
    """The job's running steps but this kernel's own, its clusters' and runs', and watches'."""
    command = ["scontrol", "show", "step", "--oneliner", job_id]
    try:
        shown = subprocess.run(command, capture_output=True, text=True, timeout=SLURM_WAIT).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []  # slurmctld busy: a start does not wait for a courtesy
    own_step = os.environ.get("SLURM_STEP_ID") or os.environ.get("SLURM_STEPID")
    here = os.uname().nodename.split(".")[0]
    found = []
    for step in _STEP.finditer(shown):
        srun = processes.get(int(step["pid"])) if step["host"] == here else None
        watching = step["name"].startswith(USAGE_STEP)  # holds next to nothing
        if step["step"] != own_step and not watching and not (srun is not None and _mine(srun)):
            found.append(_step_holder(step, srun, processes))
    return found


def _step_holder(step: re.Match, srun: psutil.Process | None, processes: dict[int, psutil.Process]) -> Holder:
    """What a step holds, and whose it is: a notebook's (ipcmagic's steps, whose srun runs here)."""
    tasks, name = int(step["tasks"]), step["name"]
    plural = "s" * (tasks > 1)
    if name.startswith("ipcmagic-torchrun-"):
        what = f"a %%torchrun run of {tasks} rank{plural}"
    elif name.startswith("ipcmagic-"):
        what = f"{tasks} engine{plural}"
    else:
        what = f"{tasks} task{plural}"
    who = _notebook(srun) if name.startswith("ipcmagic-") and srun else ""
    who = who or f"step {step['job']}.{step['step']} ({name}) of this job"
    here = _gpus(p for p in processes.values() if _is_task_of(p, step["job"], step["step"]))
    counted = sum(int(n) for n in _GPUS.findall(step["tres"]))
    on = f"on GPUs {here} of" if here else f"on {counted} GPUs of" if counted else "on"
    since = time.mktime(time.strptime(step["start"], "%Y-%m-%dT%H:%M:%S"))
    return Holder(who, what, f"{on} {step['nodes']}", since)


def _is_task_of(process: psutil.Process, job: str, step: str) -> bool:
    env = _environ(process) if _slurm_task(process) else {}
    return env.get("SLURM_JOB_ID") == job and env.get("SLURM_STEP_ID") == step


def _local_clusters(processes: dict[int, psutil.Process], mine: set[str]) -> list[Holder]:
    """Other kernels' clusters of engines that no srun step runs (local, mpirun) on this node."""
    controllers, engines = {}, {}
    for process in processes.values():
        try:
            cmdline = " ".join(process.cmdline())
            launcher = process.name() in LAUNCHERS  # srun, mpirun: engines' command lines, not engines
        except psutil.Error:
            continue
        env = _environ(process) if "ipcmagic." in cmdline and not launcher else {}
        cluster = env.get("IPP_CLUSTER_ID")
        if not cluster or cluster in mine:
            continue
        if "ipcmagic.controller" in cmdline and not _mine(process):
            controllers[cluster] = (process, env.get("SLURM_STEP_ID"))
        elif "ipcmagic.engine" in cmdline and not _forked_by_an_engine(process):
            engines.setdefault(cluster, []).append((process, env.get("SLURM_STEP_ID")))
    found = []
    for cluster, (controller, step) in controllers.items():
        # an srun step's engines are in _steps; local ones (which ipcmagic starts without the
        # kernel's step variables) and mpirun's are in no step, or the kernel's
        here = [engine for engine, engine_step in engines.get(cluster, []) if engine_step in (None, step)]
        if here:
            gpus = _gpus(here)
            where = f"on GPUs {gpus} of this node" if gpus else "on this node"
            what = f"{len(here)} engine{'s' * (len(here) > 1)}"
            who = _notebook(controller) or "another notebook of yours"
            found.append(Holder(who, what, where, min(e.create_time() for e in here)))
    return found


def _forked_by_an_engine(process: psutil.Process) -> bool:
    """An engine's own fork (its nanny), not another engine."""
    try:
        return "ipcmagic.engine" in " ".join(process.parent().cmdline())
    except (psutil.Error, AttributeError):
        return False


def _on_gpus(processes: dict[int, psutil.Process]) -> list[Holder]:
    """Other processes of this user on this node's GPUs (NVML), but ipcmagic's engines and ranks,
    which their steps and clusters name: a kernel that uses a GPU itself, a script, a server."""
    found = []
    for pid, uses in gpu_processes().items():
        process = processes.get(pid)
        env = _environ(process) if process else {}
        if process is None or _mine(process) or "IPP_CLUSTER_ID" in env or "IPCMAGIC_TORCHRUN" in env:
            continue
        gpus = ",".join(str(index) for index, _ in uses)
        memory = sum(used for _, used in uses) / 2**30
        try:
            who = _notebook(process) or f"process {pid} ({process.name()}) of yours"
            found.append(
                Holder(
                    who,
                    f"{memory:.1f} GiB of GPU memory",
                    f"on GPU {gpus} of this node",
                    process.create_time(),
                )
            )
        except psutil.Error:
            continue
    return found


def _slurm_task(process: psutil.Process) -> bool:
    try:
        return process.parent().name() == "slurmstepd"
    except (psutil.Error, AttributeError):
        return False


def _gpus(processes: Iterable[psutil.Process]) -> str:
    """The GPUs the processes' CUDA_VISIBLE_DEVICES list, together: ``0,1,2,3``."""
    seen = {g for p in processes for g in _environ(p).get("CUDA_VISIBLE_DEVICES", "").split(",") if g}
    return ",".join(sorted(seen, key=lambda g: (len(g), g)))
