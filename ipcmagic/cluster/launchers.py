"""Launchers for ipyparallel: engines as one ``srun`` step in the current allocation, with
``mpirun``, or as local processes, all ``python -m ipcmagic.engine``; the controller as
``python -m ipcmagic.controller``.

srun and mpirun are registered under the ``ipyparallel.engine_launchers`` entry point, so
``ipyparallel.Cluster(engines="srun")`` works without ipcmagic's magics too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from ipyparallel.cluster import launcher
from traitlets import Bool, Float, HasTraits, Integer, List, Unicode, default

from ..base.internals import fits
from ..base.slurm import BLOCK, as_allocation, env_prefix
from ..base.watchdog import scancel


def step_name(cluster_id: str) -> str:
    """The name of a cluster's Slurm job step, so ``squeue --steps`` shows whose it is."""
    return f"ipcmagic-{cluster_id}"


class AnyBytesOutput:
    """A process launcher whose output may hold any bytes: ipyparallel reads the output file as
    strict UTF-8, so one Latin-1 byte a C library printed failed the stop callbacks that follow
    (``%ipcluster restart`` and ``stop`` raised, a death went unnoticed); undecodable bytes read as
    U+FFFD here. Reaches into ``LocalProcessLauncher._output``, where ipyparallel keeps its read."""

    def get_output(self, remove: bool = False) -> str:
        cached = getattr(self, "_output", False)
        if fits("LocalProcessLauncher._output", cached is None or isinstance(cached, str), "it is gone"):
            if cached is None and self.output_file:
                with contextlib.suppress(FileNotFoundError):
                    self._output = Path(self.output_file).read_text(errors="replace")
        return super().get_output(remove=remove)


class LocalEngineLauncher(AnyBytesOutput, launcher.LocalEngineLauncher):
    """One local engine (of :class:`LocalEngineSetLauncher`)."""


class LocalControllerLauncher(AnyBytesOutput, launcher.LocalControllerLauncher):
    """The controller on the kernel's node, as :mod:`ipcmagic.controller`."""

    @default("controller_cmd")
    def _controller_cmd_default(self) -> list[str]:
        return [sys.executable, "-m", "ipcmagic.controller"]


class IpcmagicEngines(HasTraits):
    """Engines started as :mod:`ipcmagic.engine`: ipyparallel's engine, lighter to start."""

    @default("engine_cmd")
    def _engine_cmd_default(self) -> list[str]:
        return [sys.executable, "-m", "ipcmagic.engine"]


class LocalEngineSetLauncher(IpcmagicEngines, launcher.LocalEngineSetLauncher):
    """Engines as processes on the kernel's node, without the kernel's step identity (an MPI
    library in them must not join the kernel's step)."""

    launcher_class = LocalEngineLauncher

    @default("engine_cmd")
    def _engine_cmd_default(self) -> list[str]:
        return [*env_prefix(os.environ), sys.executable, "-m", "ipcmagic.engine"]


class AnyNodeEngineSetLauncher(AnyBytesOutput, IpcmagicEngines, launcher.MPIEngineSetLauncher):
    """Engines that may start on other nodes, where the kernel's private cluster directory (in
    the node-local ``/tmp``) does not exist: they get the connection info from
    ``$IPP_CONNECTION_INFO`` and use the user's default IPython profile, as ``ipengine`` does."""

    profile_dir_env = Bool(
        False,
        config=True,
        help="Pass $IPP_PROFILE_DIR: for engines that all run on the kernel's node, which then "
        "read the connection file there and may start before the controller has written it.",
    )

    @property
    def cluster_env(self) -> dict[str, str]:
        env = super().cluster_env
        return env if self.profile_dir_env else {k: v for k, v in env.items() if k != "IPP_PROFILE_DIR"}


class SrunEngineSetLauncher(AnyNodeEngineSetLauncher):
    """Engines as MPI ranks of one ``srun`` job step inside the current Slurm allocation.

    Never a new job: the step runs in the allocation of ``$SLURM_JOB_ID``. The step is named
    ``ipcmagic-<cluster id>`` so ``squeue --steps`` shows whose it is. srun inherits the kernel's
    environment less the variables another step left there and the kernel step's identity
    (:func:`~ipcmagic.base.slurm.is_foreign`).
    """

    mpi_cmd = List(["srun"], config=True, help="The srun command, e.g. a full path.")
    mpi_args = List(config=True, help="Extra srun options, e.g. ['--cpu-bind=cores'].")
    mpi = Unicode(
        "",
        config=True,
        help="srun --mpi plugin (pmix, pmi2, cray_shasta, ...); empty uses the site's MpiDefault.",
    )
    overlap = Bool(
        True,
        config=True,
        help="Pass --overlap: without it the step waits forever when the kernel runs in a step.",
    )
    cpus_per_engine = Integer(1, config=True, help="CPUs per engine (srun --cpus-per-task).")
    cpu_bind = Unicode("", config=True, help="srun --cpu-bind, e.g. cores; empty: the site's default.")
    gpus_per_engine = Integer(
        0, config=True, help="GPUs per engine (srun --gpus-per-task; Slurm sets CUDA_VISIBLE_DEVICES)."
    )

    @default("stop_seconds_until_kill")
    def _stop_seconds_until_kill_default(self) -> int:
        # srun ends its step within 0.2 s of SIGTERM; one that does not (slurmctld down) gets
        # SIGKILL after 1 s instead of ipyparallel's 5 s, and the watchdog does the rest
        return 1

    exit_grace = Float(
        5.0,
        config=True,
        help="Seconds the engines have at a stop to run their exit handlers, before the step is killed.",
    )
    # what ipcmagic's IPCluster learns from the engines once they registered, for a stop to reach
    # them; without it (a failed start, ipyparallel.Cluster used directly) srun's SIGKILL it is
    step_id = Unicode("", help="JOBID.STEPID of the step, once the engines said it.")
    pids_here = List(Integer(), help="The pids of the engines on this node, once they said them.")

    _ending: bool | None = None  # whether the engines got SIGTERM for a stop; None: not yet sent

    def end_engines(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (or ``sig``) to the engines, once; ipcmagic sends it first at a stop, since
        ipyparallel stops the controller before the engines (its launchers' ``join`` blocks the
        event loop). SIGKILL ends engines stuck in C code, which would not run their exit handlers."""
        if self._ending is None:
            self._ending = self.state == "running" and self._signal_engines(sig)

    async def stop(self) -> None:
        """SIGTERM to the engines, then ipyparallel's stop of srun once they are gone.

        srun answers SIGTERM by killing its step with SIGKILL (measured: ``tasks 0-1: Killed``), so
        engines stopped through srun alone would end without their exit handlers: files that an
        engine writes unflushed, ``MPI.Finalize``, the user's ``atexit`` functions.
        """
        self.end_engines()
        if self._ending:
            with contextlib.suppress(TimeoutError):
                await self.join(timeout=self.exit_grace)
        await super().stop()

    def _signal_engines(self, sig: int) -> bool:
        """``sig`` to every engine, those on this node at once, the others through Slurm (which
        may not answer); whether all of them got it."""
        for pid in self.pids_here:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if len(self.pids_here) == self.n:
            return True
        name = signal.Signals(sig).name.removeprefix("SIG")
        return bool(self.step_id) and scancel(f"--signal={name}", self.step_id, timeout=2)

    def find_args(self) -> list[str]:
        options = ["-n", str(self.n), f"--cpus-per-task={self.cpus_per_engine}"]
        options.append(f"--job-name={step_name(self.cluster_id)}")
        if self.overlap:
            options.append("--overlap")
        if self.mpi:
            options.append(f"--mpi={self.mpi}")
        if self.cpu_bind:
            options.append(f"--cpu-bind={self.cpu_bind}")
        if self.gpus_per_engine:
            options.append(f"--gpus-per-task={self.gpus_per_engine}")
        options.append(BLOCK)
        srun = [*env_prefix(os.environ), *self.mpi_cmd]
        return [*srun, *options, *self.mpi_args, *self.program, *self.program_args]


class MpirunEngineSetLauncher(AnyNodeEngineSetLauncher):
    """Engines as MPI ranks started by ``mpirun -n N``.

    In a Slurm job, mpirun sees the allocation as the job's batch script does (:func:`~ipcmagic.base.slurm.
    as_allocation`), not the kernel's step: Open MPI's and MPICH's mpirun then place ranks on all of
    the job's nodes and CPUs, and start their daemons elsewhere with ``srun --overlap``.
    """

    mpi_cmd = List(["mpirun"], config=True, help="The mpirun command, e.g. a full path.")
    mpi_args = List(config=True, help="Extra mpirun options, e.g. ['--oversubscribe'].")
    cpus_per_engine = Integer(
        0,
        config=True,
        help="CPUs per engine, each bound to its own cores (Open MPI: --map-by slot:PE=N --bind-to core); "
        "0: mpirun's default binding.",
    )

    def find_args(self) -> list[str]:
        cpus = self.cpus_per_engine
        binding = ["--map-by", f"slot:PE={cpus}", "--bind-to", "core"] if cpus else []
        mpirun = [*env_prefix(os.environ, as_allocation(os.environ)), *self.mpi_cmd]
        return [*mpirun, "-n", str(self.n), *binding, *self.mpi_args, *self.program, *self.program_args]


def is_open_mpi(mpirun: list[str]) -> bool:
    """Whether ``mpirun --version`` says Open MPI (whose binding options ipcmagic knows)."""
    try:
        out = subprocess.run([*mpirun, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in out.stdout + out.stderr
