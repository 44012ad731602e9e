"""The OSU MPI bandwidth test (osu_bw) in mpi4py, for the predecessor's example notebook, which
downloads mpi4py's demo of the same name: rank 0 sends windows of non-blocking messages of each
size to rank 1, which acknowledges each window; rank 0 prints the bandwidth per message size."""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI


def _window(comm: MPI.Comm, buf: np.ndarray, window: int) -> None:
    """One window: ``window`` messages from rank 0 to rank 1, then an acknowledgement back."""
    if comm.rank == 0:
        MPI.Request.Waitall([comm.Isend(buf, 1, tag=100) for _ in range(window)])
        comm.Recv(buf[:1], 1, tag=101)
    elif comm.rank == 1:
        MPI.Request.Waitall([comm.Irecv(buf, 0, tag=100) for _ in range(window)])
        comm.Send(buf[:1], 0, tag=101)


def osu_bw(max_size: int = 1 << 20, window: int = 64, loops: int = 20, skip: int = 2) -> None:
    """Measure on ranks 0 and 1 of COMM_WORLD; rank 0 prints MB/s by message size in bytes."""
    comm = MPI.COMM_WORLD
    if comm.size < 2:
        raise RuntimeError("osu_bw needs at least 2 MPI ranks")
    if comm.rank == 0:
        print("# OSU MPI Bandwidth Test (mpi4py)\n# Size [B]    Bandwidth [MB/s]")
    size = 1
    while size <= max_size:
        buf = np.zeros(size, dtype=np.uint8)
        comm.Barrier()
        for i in range(skip + loops):
            if i == skip:
                start = time.perf_counter()
            _window(comm, buf, window)
        if comm.rank == 0:
            print(f"{size:<12d}  {size * window * loops / (time.perf_counter() - start) / 1e6:.2f}")
        size *= 2
