"""Engine launchers for ipyparallel: one ``srun`` step in the current allocation, or ``mpirun``.

Both are registered under the ``ipyparallel.engine_launchers`` entry point, so
``ipyparallel.Cluster(engines="srun")`` works without ipcmagic's magics too.
"""

from __future__ import annotations

from ipyparallel.cluster.launcher import MPIEngineSetLauncher
from traitlets import Bool, Integer, List, Unicode

from .slurm import BLOCK


class AnyNodeEngineSetLauncher(MPIEngineSetLauncher):
    """Engines that may start on other nodes, where the kernel's private cluster directory (in
    the node-local ``/tmp``) does not exist: they get the connection info from
    ``$IPP_CONNECTION_INFO`` and use the user's default IPython profile, as ``ipengine`` does."""

    @property
    def cluster_env(self) -> dict[str, str]:
        return {k: v for k, v in super().cluster_env.items() if k != "IPP_PROFILE_DIR"}


class SrunEngineSetLauncher(AnyNodeEngineSetLauncher):
    """Engines as MPI ranks of one ``srun`` job step inside the current Slurm allocation.

    Never a new job: the step runs in the allocation of ``$SLURM_JOB_ID``. The step is named
    ``ipcmagic-<cluster id>`` so ``squeue --steps`` shows whose it is.
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

    @property
    def step_name(self) -> str:
        return f"ipcmagic-{self.cluster_id}"

    def find_args(self) -> list[str]:
        options = ["-n", str(self.n), f"--cpus-per-task={self.cpus_per_engine}"]
        options.append(f"--job-name={self.step_name}")
        if self.overlap:
            options.append("--overlap")
        if self.mpi:
            options.append(f"--mpi={self.mpi}")
        options.append(BLOCK)
        return [*self.mpi_cmd, *options, *self.mpi_args, *self.program, *self.program_args]


class MpirunEngineSetLauncher(AnyNodeEngineSetLauncher):
    """Engines as MPI ranks started by ``mpirun -n N``."""

    mpi_cmd = List(["mpirun"], config=True, help="The mpirun command, e.g. a full path.")
    mpi_args = List(config=True, help="Extra mpirun options, e.g. ['--oversubscribe'].")
