"""Overhead of %%torchrun over running the same script with ``python -m torch.distributed.run``.

    .venv/bin/python benchmarks/torchrun_overhead.py [--repeat 5] [--nproc 2]
Inside an allocation it also compares the srun launcher with a hand-written srun line.
Prints medians (min-max) in seconds, all measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from IPython.core.interactiveshell import InteractiveShell

from ipcmagic.base.slurm import Allocation
from ipcmagic.torchrun.plan import free_port

SCRIPT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)
dist.destroy_process_group()
"""


def timed(run: Callable[[], None]) -> float:
    tic = time.perf_counter()
    run()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    n = args.nproc
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "ipcmagic")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "script.py")
        with open(script, "w") as f:
            f.write(SCRIPT)

        def direct_standalone() -> None:
            argv = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={n}",
                script,
            ]
            subprocess.run(argv, check=True, capture_output=True)

        def direct_srun() -> None:
            task = 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"'
            env = {
                **os.environ,
                "MASTER_ADDR": Allocation.from_env().nodes[0],
                "MASTER_PORT": str(free_port()),
            }
            argv = ["srun", "--overlap", "-n", str(n), "bash", "-c", task, "task", sys.executable, script]
            subprocess.run(argv, check=True, capture_output=True, env=env)

        def magic(launcher: str) -> Callable[[], None]:
            def run() -> None:
                with contextlib.redirect_stdout(io.StringIO()):
                    shell.run_cell_magic("torchrun", f"-n {n} --launcher {launcher}", SCRIPT)

            return run

        pairs = [("standalone", direct_standalone, magic("standalone"))]
        if Allocation.from_env():
            pairs.append(("srun", direct_srun, magic("srun")))
        print(f"{'launcher':<11} {'direct s':<20} {'%%torchrun s':<20} {'overhead s (median)'}")
        for name, direct, cell in pairs:
            times: dict[str, list[float]] = {"direct": [], "magic": []}
            for i in range(args.repeat):  # interleaved in ABBA order, so drifts and order hit both alike
                order = [("direct", direct), ("magic", cell)]
                for key, run in order[:: 1 if i % 2 == 0 else -1]:
                    times[key].append(timed(run))
            d, m = (statistics.median(times[k]) for k in ("direct", "magic"))
            cols = [
                f"{d:.2f} ({min(times['direct']):.2f}-{max(times['direct']):.2f})",
                f"{m:.2f} ({min(times['magic']):.2f}-{max(times['magic']):.2f})",
            ]
            print(f"{name:<11} {cols[0]:<20} {cols[1]:<20} {m - d:+.2f}", flush=True)


if __name__ == "__main__":
    main()
