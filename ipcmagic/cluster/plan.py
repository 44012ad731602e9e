"""What a start will run (pure): a user's request and the site's configuration become an EnginePlan."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from ..base.commands import resolve_launcher, shell_words
from ..base.gpus import visible_devices
from ..base.slurm import Allocation, require_full_export

LAUNCHERS = ("auto", "srun", "mpirun", "local")


@dataclass(frozen=True)
class EnginePlan:
    """What will run: a launcher, how many engines, the launcher's traits, and what ipcmagic does
    on the engines once they run."""

    launcher: str
    n: int
    traits: dict[str, Any] = field(default_factory=dict)
    #: CPUs per engine (also the threads of each dask worker)
    cpus: int = 1
    #: GPUs per engine that ipcmagic hands out by CUDA_VISIBLE_DEVICES (srun: Slurm does, then 0)
    gpus: int = 0
    #: make the engines a dask.distributed cluster
    dask: bool = False
    #: make the engines one torch.distributed world (:mod:`.torchworld`)
    torch: bool = False
    #: why ``n`` engines, where no -n number chose it (:func:`engine_count`)
    rule: str = ""

    @property
    def launcher_class(self) -> type:
        return launcher_class(self.launcher)


def launcher_class(name: str) -> type:
    """The ipyparallel engine-set launcher class of a launcher name."""
    from . import launchers

    return getattr(launchers, f"{name.capitalize()}EngineSetLauncher")


DASK_NEEDS = {"distributed": "dask.distributed", "cryptography": "cryptography (for its TLS certificate)"}


def engine_count(
    allocation: Allocation | None, launcher: str, n: int | str | None, cpus: int | None, gpus: int
) -> tuple[int, str, int | None, int]:
    """How many engines a start without a number for -n starts, why, and the CPUs and GPUs each
    gets: ``-n gpu`` and a whole-node job with GPUs, one per GPU, each with its own GPU and an
    equal share of its node's CPUs; a whole-node job without GPUs, one per CPU (as mpirun in such
    a job); a job with a task count or a kernel in a job step, the job's tasks; outside Slurm (or
    with local engines), one per CPU of this machine. ``cpus`` and ``gpus`` given win."""
    if isinstance(n, int):
        return n, "", cpus, gpus
    if n not in (None, "gpu"):
        raise UsageError(f"-n takes a number of engines or 'gpu' (one per GPU of this job), not {n!r}.")
    local = allocation is None or launcher == "local"
    if n is None and not local and allocation.has_task_count:
        return allocation.tasks(), "one per task of this job", cpus, gpus
    node_gpus = {socket.gethostname(): len(visible_devices())} if local else allocation.gpus_per_node()
    if n == "gpu" and not sum(node_gpus.values()):
        where = "this machine" if local else f"job {allocation.job_id}"
        raise UsageError(f"-n gpu starts one engine per GPU, but {where} has no GPUs; give -n a number.")
    if sum(node_gpus.values()):
        if local:  # local engines are not bound to CPUs
            return sum(node_gpus.values()), "one per GPU of this machine", cpus, gpus or 1
        node_cpus = allocation.node_cpus()
        share = min(node_cpus[node] // count for node, count in node_gpus.items() if count)
        return sum(node_gpus.values()), "one per GPU of this job", cpus or max(1, share), gpus or 1
    if local:
        return os.cpu_count() or 1, "one per CPU of this machine", cpus, gpus
    per = f"{cpus} CPUs" if cpus and cpus > 1 else "CPU"
    return allocation.cpus // (cpus or 1), f"one per {per} of this job", cpus, gpus


def plan_engines(
    allocation: Allocation | None,
    *,
    launcher: str = "auto",
    n: int | str | None = None,
    cpus_per_engine: int | None = None,
    cpu_bind: str = "",
    gpus_per_engine: int = 0,
    mpi: str | None = None,
    dask: bool = False,
    torch: bool = False,
    launcher_args: str = "",
) -> EnginePlan:
    """Turn a user's request into an EnginePlan, or raise UsageError saying what to change."""
    launcher = resolve_launcher(launcher, allocation, LAUNCHERS, "local")
    if launcher != "srun" and (cpu_bind or mpi):
        raise UsageError("--cpu-bind and --mpi apply to the srun launcher only.")
    if launcher == "local" and cpus_per_engine is not None:
        raise UsageError("-c/--cpus-per-engine applies to the srun and mpirun launchers only.")
    n, rule, cpus_per_engine, gpus_per_engine = engine_count(
        allocation, launcher, n, cpus_per_engine, gpus_per_engine
    )
    if n < 1:
        raise UsageError(f"-n must be at least 1 engine, not {n}.")
    cpus = 1 if cpus_per_engine is None else cpus_per_engine
    if cpus < 1:
        raise UsageError(f"-c must be at least 1 CPU per engine, not {cpus}.")
    if gpus_per_engine < 0:
        raise UsageError(f"--gpus-per-engine must be 0 or more, not {gpus_per_engine}.")
    if launcher == "srun" and n * cpus > allocation.cpus:
        raise UsageError(
            f"{n} engines with {cpus} CPU(s) each need {n * cpus} CPUs, but this allocation has "
            f"{allocation.cpus}; use -n {allocation.cpus // cpus} or fewer, or a larger allocation."
        )
    missing = [name for name in DASK_NEEDS if dask and not importlib.util.find_spec(name)]
    if missing:
        raise UsageError(
            f"--dask needs {' and '.join(DASK_NEEDS[name] for name in missing)} in this kernel: "
            "pip install 'ipcmagic[dask]'."
        )
    args = shell_words(launcher_args, "--launcher-args")
    traits: dict[str, Any]
    if launcher == "srun":
        require_full_export(args, "--launcher-args")
        traits = {
            "mpi_args": args,
            "cpus_per_engine": cpus,
            "cpu_bind": cpu_bind,
            "gpus_per_engine": gpus_per_engine,
        }
        if mpi:
            traits["mpi"] = mpi
    elif launcher == "mpirun":
        traits = {"mpi_args": args, "cpus_per_engine": cpus_per_engine or 0}
    else:
        traits = {"engine_args": args, "delay": 0.0}
    handed_out = 0 if launcher == "srun" else gpus_per_engine
    return EnginePlan(launcher, n, traits, cpus=cpus, gpus=handed_out, dask=dask, torch=torch, rule=rule)


#: %ipcluster start options that a site may configure on the launchers
SITE_OPTIONS = ("cpus_per_engine", "cpu_bind", "gpus_per_engine", "mpi")
#: the launchers' lists of extra arguments: the site's, then the user's
EXTRA_ARGS = ("mpi_args", "engine_args")


def site_options(configured: Any) -> dict[str, Any]:
    """The start options a site set on a launcher (``ipython_config.py``): the traits of
    :data:`SITE_OPTIONS` it has, where they differ from ipcmagic's defaults."""
    return {
        name: getattr(configured, name)
        for name in SITE_OPTIONS
        if configured.has_trait(name) and getattr(configured, name) != configured.trait_defaults(name)
    }
