"""The standalone launcher of ``%%torchrun``: ``nproc`` ranks of one static world on this node.

Run as ``python -c <this file> nproc program...`` by the ranks' interpreter (standard library only,
as :mod:`ipcmagic.torchrun.rank`), in the run's own process group. It replaces torch's elastic agent, which
listens on every interface and loads a pickle from its unauthenticated store again and again:
anyone on the node could run code as the notebook's user through it. Here no agent runs and
nothing is loaded from a store: each rank gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1`` and the kernel's ``MASTER_PORT``, as srun's tasks do; torch's own
TCPStore (rank 0's, for ``init_process_group``) is all that listens.

A rank's stdout and stderr are one pipe, relayed line by line as ``N: line`` (srun --label's form),
so a traceback follows what the rank printed before it. A rank that ends badly is reported as srun
reports it (``ipcmagic: error: host: task 1: Exited with exit code 3``) and the others are stopped
as ``srun --kill-on-bad-exit`` does: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading

#: each rank's CUDA_VISIBLE_DEVICES, ``;``-separated (``%%torchrun --gpus-per-rank``)
RANK_GPUS_VAR = "IPCMAGIC_RANK_GPUS"
#: seconds between SIGTERM and SIGKILL for the ranks still running after one failed
GRACE = 3.0
_write = threading.Lock()


def relay(rank: int, stream) -> None:
    """Every line of ``stream`` to stdout as ``rank: line``."""
    label = b"%d: " % rank
    for line in stream:
        with _write:
            sys.stdout.buffer.write(label + line + (b"" if line.endswith(b"\n") else b"\n"))
            sys.stdout.buffer.flush()


def report(rank: int, returncode: int) -> None:
    """A rank's bad end in srun's words, which :mod:`ipcmagic.base.exits` reads back."""
    how = signal.strsignal(-returncode) if returncode < 0 else f"Exited with exit code {returncode}"
    with _write:
        sys.stdout.buffer.write(f"ipcmagic: error: {socket.gethostname()}: task {rank}: {how}\n".encode())
        sys.stdout.buffer.flush()


def start(rank: int, nproc: int, program: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "ROLE_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "ROLE_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
    }
    gpus = env.pop(RANK_GPUS_VAR, "")
    if gpus:  # --gpus-per-rank: its own devices
        env["CUDA_VISIBLE_DEVICES"] = gpus.split(";")[rank]
    if nproc > 1:  # torchrun's rule: one OpenMP thread per rank unless told otherwise
        env.setdefault("OMP_NUM_THREADS", "1")
    pipe = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    return subprocess.Popen(program, env=env, **pipe)


def main() -> None:
    nproc, program = int(sys.argv[1]), sys.argv[2:]
    for sig in (signal.SIGINT, signal.SIGTERM):  # they reach the ranks too, being one process group:
        signal.signal(sig, lambda *_: None)  # this launcher stays to relay what the ranks print then
    ranks = [start(rank, nproc, program) for rank in range(nproc)]
    relays = [threading.Thread(target=relay, args=(r, p.stdout), daemon=True) for r, p in enumerate(ranks)]
    ended: queue.Queue[tuple[int, int]] = queue.Queue()
    for rank, process in enumerate(ranks):
        threading.Thread(target=lambda r=rank, p=process: ended.put((r, p.wait())), daemon=True).start()
    for thread in relays:
        thread.start()
    failed = 0
    for _ in ranks:
        rank, returncode = ended.get()
        if returncode and not failed:
            failed = returncode if returncode > 0 else 128 - returncode
            stop(ranks)
        if returncode:
            relays[rank].join(1.0)  # its last lines before the report
            report(rank, returncode)
    for thread in relays:
        thread.join(1.0)  # a rank's children may keep its pipe open
    sys.exit(failed)


def stop(ranks: list[subprocess.Popen]) -> None:
    """SIGTERM to the ranks still running, SIGKILL to those running ``GRACE`` seconds later."""
    for process in ranks:
        if process.poll() is None:
            process.terminate()

    def kill() -> None:
        for process in ranks:
            if process.poll() is None:
                process.kill()

    timer = threading.Timer(GRACE, kill)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    main()
