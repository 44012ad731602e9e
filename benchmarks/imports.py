"""What loading ipcmagic costs a kernel: ``import ipcmagic`` and ``%load_ext ipcmagic`` in a fresh
IPython, each in a new process, and which heavy packages they pull in (none should).

    .venv/bin/python benchmarks/imports.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

GOAL_MS = 50
HEAVY = ("ipyparallel", "torch", "mpi4py", "zmq")
PROBE = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
tic = time.perf_counter()
{action}
ms = (time.perf_counter() - tic) * 1e3
print(json.dumps([ms, [m for m in {heavy!r} if m in sys.modules]]))
"""
ACTIONS = {
    "import ipcmagic": "import ipcmagic",
    "%load_ext ipcmagic": "shell.run_line_magic('load_ext', 'ipcmagic')",
}


def measure(action: str) -> tuple[float, list[str]]:
    code = PROBE.format(action=action, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ms, heavy = json.loads(out.splitlines()[-1])
    return ms, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"{'action':<20} {'ms: median (min-max)':<24} {'heavy imports':<14} goal <= {GOAL_MS} ms")
    for name, action in ACTIONS.items():
        runs = [measure(action) for _ in range(args.repeat)]
        times = [ms for ms, _ in runs]
        heavy = sorted({m for _, found in runs for m in found}) or ["none"]
        median = statistics.median(times)
        verdict = "met" if median <= GOAL_MS and heavy == ["none"] else "NOT met"
        span = f"{median:6.1f} ({min(times):.1f}-{max(times):.1f})"
        print(f"{name:<20} {span:<24} {', '.join(heavy):<14} {verdict}")


if __name__ == "__main__":
    main()
