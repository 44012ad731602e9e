"""What a start will run (pure): a user's request and the site's configuration become an EnginePlan."""

from __future__ import annotations

import importlib.util
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from ..base.commands import resolve_launcher
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

    @property
    def launcher_class(self) -> type:
        return launcher_class(self.launcher)


def launcher_class(name: str) -> type:
    """The ipyparallel engine-set launcher class of a launcher name."""
    from . import launchers

    return getattr(launchers, f"{name.capitalize()}EngineSetLauncher")


DASK_NEEDS = {"distributed": "dask.distributed", "cryptography": "cryptography (for its TLS certificate)"}


def plan_engines(
    allocation: Allocation | None,
    *,
    launcher: str = "auto",
    n: int | None = None,
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
    if n is None:  # MPI engines fill the job's tasks, local ones this node's CPUs
        n = allocation.tasks() if allocation and launcher != "local" else os.cpu_count() or 1
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
    try:
        args = shlex.split(launcher_args)
    except ValueError as e:
        raise UsageError(f"--launcher-args {launcher_args!r} is not valid shell syntax: {e}.") from None
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
    return EnginePlan(launcher, n, traits, cpus=cpus, gpus=handed_out, dask=dask, torch=torch)


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
