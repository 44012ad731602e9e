"""Cell-to-cell cost of distributed PyTorch: a 4-rank all_reduce cell run with ``%%px`` on a world
that stays up (``%ipcluster start --torch``) against the same cell as ``%%torchrun`` (new ranks,
torch imported and the process group formed each time). Also what forming the world adds to a start.

    salloc -n 5 srun -n 1 .venv/bin/python benchmarks/torch_world.py [--nproc 4] [--repeat 5]
    .venv/bin/python benchmarks/torch_world.py            # outside Slurm: local engines, standalone

Prints medians (min-max) in seconds, measured in the same run, and the goal as met / not met.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable

from IPython.core.interactiveshell import InteractiveShell

IMPORTS = "import torch\nimport torch.distributed as dist\n"
ALL_REDUCE = "t = torch.ones(1)\ndist.all_reduce(t)\n"
#: the cell, on the world that stays up and as a %%torchrun job (which forms the process group)
PX_CELL = f"%%px\n{IMPORTS}{ALL_REDUCE}"
TORCHRUN_CELL = f'{IMPORTS}dist.init_process_group("gloo")\n{ALL_REDUCE}'
#: a world that stays up should make such a cell at least this many times cheaper
GOAL = 10.0


def timed(run: Callable[[], object]) -> float:
    tic = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run()
    return time.perf_counter() - tic


def figures(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f} ({min(seconds):.3f}-{max(seconds):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipcmagic")
    start = timed(lambda: shell.run_line_magic("ipcluster", f"start -n {args.nproc}"))
    shell.run_line_magic("ipcluster", "stop")
    start_torch = timed(lambda: shell.run_line_magic("ipcluster", f"start -n {args.nproc} --torch"))
    timed(lambda: shell.run_cell(PX_CELL).raise_error())  # the first use of the world
    px = [timed(lambda: shell.run_cell(PX_CELL).raise_error()) for _ in range(args.repeat * 4)]
    shell.run_line_magic("ipcluster", "stop")
    job = f"-n {args.nproc}"
    torchrun = [
        timed(lambda: shell.run_cell_magic("torchrun", job, TORCHRUN_CELL)) for _ in range(args.repeat)
    ]
    ratio = statistics.median(torchrun) / statistics.median(px)
    print(f"{args.nproc} ranks, seconds: median (min-max)")
    print(f"  %ipcluster start            {start:.2f}")
    print(f"  %ipcluster start --torch    {start_torch:.2f}  (+{start_torch - start:.2f} to form the world)")
    print(f"  %%px all_reduce cell        {figures(px)}")
    print(f"  %%torchrun all_reduce cell  {figures(torchrun)}")
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"goal: a cell on a lasting world >= {GOAL:g}x cheaper than %%torchrun: {ratio:.0f}x, {verdict}")


if __name__ == "__main__":
    main()
