"""The engines as they report themselves: one row each, and whether they are one MPI world."""

from __future__ import annotations

from typing import Any


def engine_info() -> Any:
    """Runs on an engine: its MPI rank and world size (None without MPI), host, pid, CPU
    affinity, CUDA_VISIBLE_DEVICES and Slurm step, as a dict."""
    import os
    import socket
    import sys

    from ipcmagic.cluster.replies import plain
    from ipcmagic.cluster.status import cpu_ranges

    world = sys.modules["mpi4py.MPI"].COMM_WORLD if "mpi4py.MPI" in sys.modules else None
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    return plain(
        {
            "rank": world.Get_rank() if world else None,
            "size": world.Get_size() if world else None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cpus": cpu_ranges(os.sched_getaffinity(0)),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "step": f"{job}.{step}" if job and step else None,
        }
    )


def split_worlds(rows: list[dict[str, Any]], n: int) -> str | None:
    """Why the engines in ``rows`` are not MPI ranks 0..n-1 of one world, or None when they are
    (or do not use MPI)."""
    sizes = sorted({row["size"] for row in rows if row["size"] is not None})
    if not sizes or sizes == [n]:
        return None
    return (
        f"The {n} engines are not one MPI world: they see COMM_WORLD sizes {sizes}, not {n}. "
        "The MPI library does not match the launcher's process manager; with srun pick the "
        "plugin your MPI needs (--mpi pmix for Open MPI, --mpi pmi2 for MPICH; srun --mpi=list "
        "shows them), or use --launcher mpirun."
    )


#: the engine's log line when it looks for ipyparallel's default connection file (no cluster id):


ENGINE_INFO = ("rank", "size", "host", "pid", "cpus", "gpus", "step")


def engine_row(engine_id: int, state: str, **info: Any) -> dict[str, Any]:
    """An engine as ``%ipcluster status`` lists it; what an engine did not report is None."""
    return {"id": engine_id, "state": state, **dict.fromkeys(ENGINE_INFO), **info}
