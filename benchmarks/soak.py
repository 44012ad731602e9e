"""Soak: many start/stop cycles (and %%torchrun runs) in a real Jupyter kernel must not grow the
kernel process users run: its file descriptors, threads and memory, measured from outside after
a garbage collection in the kernel; and must leave no process, step or directory.

    salloc -n 4 srun -n 1 .venv/bin/python benchmarks/soak.py [--cycles 50] [-n 2] [--launcher srun]
        [--torchrun 50]
Prints the kernel's counts after the warm-up cycle and after the last, and exits 1 on growth.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

#: a cycle's cell is run in the kernel; the kernel is measured after this one
COLLECT = "import gc; gc.collect()"
#: how much a kernel may grow over a soak before it counts as a leak: threads not at all; fds by
#: what ipykernel holds and reaps in batches (an event pipe per thread that ever printed, such as
#: the thread that shows each start's progress bar); memory by allocator noise and IPython's own
#: history of the cells
ALLOWED = {"fds": 8, "threads": 0, "rss MiB": 4.0}


@contextmanager
def kernel() -> Iterator[tuple[psutil.Process, callable]]:
    """A real IPython kernel (jupyter_client) with ipcmagic loaded: its process, and a function
    that runs a cell there and raises if the cell fails."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")

    def run(code: str) -> None:
        reply = client.execute_interactive(code, timeout=300, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed in the kernel: {reply['content'].get('evalue')}")

    try:
        run("%load_ext ipcmagic")
        yield psutil.Process(manager.provisioner.process.pid), run
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def measure(process: psutil.Process, run: callable) -> dict[str, float]:
    run(COLLECT)
    return {
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "rss MiB": round(process.memory_info().rss / 2**20, 1),
    }


def soak(cells: list[str], cycles: int) -> tuple[dict[str, float], dict[str, float]]:
    """Run ``cells`` ``cycles`` times in one kernel; its counts after the first round (imports,
    caches and pools exist then) and after the last."""
    with kernel() as (process, run):
        for cycle in range(cycles):
            for cell in cells:
                run(cell)
            if cycle == 0:
                first = measure(process, run)
        return first, measure(process, run)


def growth(first: dict[str, float], last: dict[str, float]) -> list[str]:
    """What grew more than :data:`ALLOWED`."""
    return [f"{key} {first[key]} -> {last[key]}" for key in ALLOWED if last[key] - first[key] > ALLOWED[key]]


def cluster_cycle(n: int, launcher: str) -> list[str]:
    """One start/stop cycle with a %%px cell, as a notebook does it."""
    return [f"%ipcluster start -n {n} --launcher {launcher}", "%%px\nx = 1", "%ipcluster stop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--launcher", default="auto")
    parser.add_argument("--torchrun", type=int, default=50, help="%%torchrun runs (0: none)")
    args = parser.parse_args()
    soaks = {
        f"{args.cycles} start/stop cycles of {args.n} engines ({args.launcher})": (
            cluster_cycle(args.n, args.launcher),
            args.cycles,
        )
    }
    if args.torchrun:
        soaks[f"{args.torchrun} %%torchrun -n 2 runs"] = (["%%torchrun -n 2\nimport torch"], args.torchrun)
    failed = False
    for title, (cells, cycles) in soaks.items():
        first, last = soak(cells, cycles)
        grown = growth(first, last)
        print(f"{title}, {os.cpu_count()} cores: kernel after cycle 1 {first}, after the last {last}")
        print(f"  {'met' if not grown else 'NOT MET: ' + ', '.join(grown)} (allowed growth {ALLOWED})")
        failed = failed or bool(grown)
    left = list(Path(tempfile.gettempdir()).glob("ipcmagic-*"))
    if left:
        print("LEFT:", left)
    sys.exit(1 if failed or left else 0)


if __name__ == "__main__":
    main()
