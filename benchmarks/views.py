"""Data to many engines: the view ``%px`` uses against ipyparallel's DirectView (``rc[:]``) and
BroadcastView, each doing what users do with them, on the same cluster, interleaved.

    .venv/bin/python benchmarks/views.py [--sizes 4 16 64] [--repeat 20] [--mib 8] [--executes 3000]
Local engines (what a view does is the same for every launcher). Prints medians (min-max) in
milliseconds per operation and view, and issue 16's goals as met / not met; at the first size, what
--executes blocking executes (and a blocking push per 3) leave in the kernel per view (issue 29).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import psutil
from IPython.core.interactiveshell import InteractiveShell

from ipcmagic.cluster.ipcluster import IPCluster
from ipcmagic.cluster.pxview import px_view

#: issue 16: push 8 MiB to 64 engines at most this many ms; %%px no-op no slower than DirectView's
PUSH_64_MS = 250.0


def views(client) -> dict[str, object]:
    """Each view blocking, and activated as %%px_0, %%px_1, ..."""
    kinds = {"DirectView": client[:], "BroadcastView": client.broadcast_view()}
    kinds["ipcmagic %px"] = px_view(client)
    for i, view in enumerate(kinds.values()):
        view.block = True
        view.activate(suffix=f"_{i}")
    return kinds


def operations(shell: InteractiveShell, mib: int) -> dict[str, tuple[Callable[[object], object], int]]:
    """name: (what it does with a view, how many times to repeat it relative to --repeat)"""
    data = np.ones(mib * 2**20 // 8)

    def px_noop(view) -> None:
        magic = next(m for m in shell.configurables if getattr(m, "view", None) is view)
        shell.run_cell_magic(f"px{magic.suffix}", "", "pass")

    return {
        "%%px no-op": (px_noop, 1),
        "apply no-op": (lambda view: view.apply_sync(int), 1),
        f"push {mib} MiB": (lambda view: view.push({"data": data}, block=True), 4),
        f"pull {mib} MiB": (lambda view: view.pull("data", block=True), 4),
        f"scatter {mib} MiB": (lambda view: view.scatter("part", data, block=True), 4),
    }


def held(client) -> tuple[int, int, int]:
    """The kernel's RSS, the client's cached results and its outstanding messages."""
    return psutil.Process().memory_info().rss, len(client.results), len(client.outstanding)


def growth(kinds: dict[str, object], executes: int) -> str:
    """What ``executes`` executes (and a push per 3) on each view, in turn, add to the kernel's RSS,
    the client's results and its outstanding messages."""
    rows = []
    # BroadcastView last: what it leaves behind would weigh on the views after it
    for name, view in sorted(kinds.items(), key=lambda kind: kind[0] == "BroadcastView"):
        for rounds in (executes // 10, executes):  # a warm-up first: what is made once is no growth
            before = held(view.client)
            for i in range(rounds):
                view.execute("y = 1", block=True)
                if i % 3 == 0:
                    view.push({"y": i}, block=True)
        rss, results, outstanding = (now - then for now, then in zip(held(view.client), before, strict=True))
        rows.append(f"{name}: RSS {rss / 2**20:+.0f} MiB, {results:+} results, {outstanding:+} outstanding")
    return f"after {executes} executes and {executes // 3} pushes each: " + "; ".join(rows)


def measure(fn: Callable[[], object]) -> float:
    tic = time.perf_counter()
    fn()
    return (time.perf_counter() - tic) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--mib", type=int, default=8)
    parser.add_argument("--executes", type=int, default=3000)
    args = parser.parse_args()
    shell = InteractiveShell.instance()
    print(f"medians (min-max) in ms; %%px and apply: {args.repeat} runs, data: {max(1, args.repeat // 4)}")
    for n in args.sizes:
        cluster = IPCluster(timeout=600, local_engines_per_cpu=64)
        client = cluster.start(cluster.plan_start(None, launcher="local", n=n))
        kinds = views(client)
        print(f"\n{n} engines   " + "".join(f"{name:>26}" for name in kinds))
        results: dict[tuple[str, str], float] = {}
        for op, (fn, weight) in operations(shell, args.mib).items():
            times: dict[str, list[float]] = {name: [] for name in kinds}
            for _ in range(max(1, args.repeat // weight)):
                for name, view in kinds.items():  # interleaved, so drift hits every view alike
                    times[name].append(measure(partial(fn, view)))
            row = ""
            for name, values in times.items():
                results[op, name] = statistics.median(values)
                row += f"{statistics.median(values):>9.1f} ({min(values):.1f}-{max(values):.1f})".rjust(26)
            print(f"{op:<12}" + row, flush=True)
        print(goals(n, results, args.mib))
        if n == args.sizes[0] and args.executes:
            print(growth(kinds, args.executes))
        cluster.stop()


def goals(n: int, results: dict[tuple[str, str], float], mib: int) -> str:
    ours, direct = "ipcmagic %px", "DirectView"
    push = f"push {mib} MiB"
    notes = [
        f"%%px no-op x{results['%%px no-op', ours] / results['%%px no-op', direct]:.2f} of DirectView's",
        f"push x{results[push, direct] / results[push, ours]:.1f} faster than DirectView",
    ]
    if n == 64 and mib == 8:
        ok = results[push, ours] <= PUSH_64_MS
        notes.append(f"push 8 MiB to 64 <= {PUSH_64_MS:.0f} ms: {'met' if ok else 'NOT met'}")
    return "goals: " + "; ".join(notes)


if __name__ == "__main__":
    main()
