"""The notebook's values in and out of distributed PyTorch runs: what ``launch`` costs over
``%%torchrun`` for the same work, and the time to push and pull 100 MB and 1 GB, beside the link's
own speed (a plain TCP stream of the same bytes between the same places), all in one run.

    .venv/bin/python benchmarks/exchange.py                                  # loopback, standalone
    salloc -N 2 --ntasks-per-node=1 srun -N 1 -n 1 .venv/bin/python benchmarks/exchange.py --nnodes 2

Prints medians (min-max) in seconds; compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from IPython.core.interactiveshell import InteractiveShell

from ipcmagic.base.addresses import address_for
from ipcmagic.base.slurm import Allocation
from ipcmagic.torchrun import launch

#: reads N bytes from HOST:PORT and exits: the far end of the plain stream
RECEIVER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as sock:
    left, buffer = int(sys.argv[3]), bytearray(1 << 24)
    while left:
        got = sock.recv_into(buffer, min(left, len(buffer)))
        if not got:
            sys.exit("the stream ended early")
        left -= got
"""


#: the cell of the push and pull: every rank gets the data, the last (on the far node) sends it back
BACK_FROM_THE_LAST = """
import os
back = data if int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1 else None
"""


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    return times


def shown(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"


def plain_stream(size: int, far_node: str | None) -> float:
    """Seconds to stream ``size`` bytes from this process to a process on ``far_node`` (or here)."""
    host = address_for((far_node,) if far_node else ())
    with socket.create_server((host, 0)) as server:
        port = server.getsockname()[1]
        where = ["srun", "--overlap", "-N", "1", "-n", "1", "-w", far_node] if far_node else []
        receiver = subprocess.Popen([*where, sys.executable, "-c", RECEIVER, host, str(port), str(size)])
        sock, _ = server.accept()
        data = memoryview(bytes(size))
        tic = time.perf_counter()
        with sock:
            for start in range(0, size, 1 << 24):
                sock.sendall(data[start : start + (1 << 24)])
        receiver.wait()
        return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nnodes", type=int, default=1)
    args = parser.parse_args()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipcmagic")
    allocation = Allocation.from_env()
    ranks = "-n 2" if args.nnodes == 1 else f"--nnodes {args.nnodes} -n 1"
    nproc, nnodes = (2, 1) if args.nnodes == 1 else (1, args.nnodes)
    where = f"{'srun' if allocation else 'standalone'}, {nproc * nnodes} ranks on {nnodes} node(s)"
    print(f"{where}; medians (min-max) of {args.repeat}, seconds")

    def cell(line: str, code: str) -> Callable[[], None]:
        def run() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                shell.run_cell_magic("torchrun", line, code)

        return run

    no_op = timed(cell(ranks, "x = 1"), args.repeat)
    launched = timed(lambda: launch(int, nproc=nproc, nnodes=nnodes), args.repeat)
    extra = statistics.median(launched) - statistics.median(no_op)
    print(f"%%torchrun no-op {shown(no_op)}; launch(int) {shown(launched)}: {extra:+.2f}")
    far = allocation.nodes[-1] if allocation and args.nnodes > 1 else None
    for size in (100 * 2**20, 2**30):
        shell.user_ns["data"] = bytes(size)
        code = (
            "import os\nback = data if os.environ['RANK'] == str(int(os.environ['WORLD_SIZE']) - 1) else None"
        )
        moved = timed(cell(f"{ranks} --push data --pull back", code), args.repeat)
        exchange = statistics.median(moved) - statistics.median(no_op)
        streams = [plain_stream(size, far) for _ in range(3)]
        # pushed to every rank, pulled from the last (on the far node): ranks + 1 copies
        copies, mib = nproc * nnodes + 1, size / 2**20
        print(
            f"{mib:>6.0f} MiB to {nproc * nnodes} ranks and back from one: {shown(moved)} s, "
            f"{exchange:.2f} s over the no-op ({copies * mib / exchange:.0f} MiB/s, {copies} copies); "
            f"plain TCP stream {mib / statistics.median(streams):.0f} MiB/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
