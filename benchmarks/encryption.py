"""What CurveZMQ (``c.IPCluster.encrypt``, on by default) costs: start, ``%%px`` no-op and push
8 MiB through ``%px``'s view, encrypted and plain clusters side by side, operations interleaved.

    .venv/bin/python benchmarks/encryption.py [--sizes 4 16 64] [--repeat 20] [--mib 8]
Local engines (the cost is the controller's and the client's, the same for every launcher).
Prints medians (min-max) in ms and the encrypted/plain ratio; the goal (issue 30): encryption
costs at most 1.5x on %%px no-op and push.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
from IPython.core.interactiveshell import InteractiveShell

from benchmarks.views import measure
from ipcmagic.cluster.ipcluster import IPCluster
from ipcmagic.cluster.pxview import px_view

#: the most encryption may cost, as a ratio to the plain cluster's median
GOAL = 1.5


def start(n: int, encrypt: bool) -> tuple[IPCluster, object, float]:
    cluster = IPCluster(timeout=600, local_engines_per_cpu=64, encrypt=encrypt)
    tic = time.perf_counter()
    client = cluster.start(cluster.plan_start(None, launcher="local", n=n))
    return cluster, client, (time.perf_counter() - tic) * 1000


def suffix(encrypt: bool) -> str:
    return "_encrypted" if encrypt else "_plain"


def px_noop(shell: InteractiveShell, view: object, encrypt: bool) -> None:
    shell.run_cell_magic(f"px{suffix(encrypt)}", "", "pass")


def push(data: np.ndarray, view, encrypt: bool) -> None:
    view.push({"data": data}, block=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--mib", type=int, default=8)
    args = parser.parse_args()
    shell = InteractiveShell.instance()
    data = np.ones(args.mib * 2**20 // 8)
    print(f"medians (min-max) in ms; %%px: {args.repeat} runs, push: {max(1, args.repeat // 4)}")
    verdicts = []
    for n in args.sizes:
        # the plain one first for even sizes, the encrypted one for odd: neither always starts alone
        order = [False, True] if args.sizes.index(n) % 2 == 0 else [True, False]
        started = {encrypt: start(n, encrypt) for encrypt in order}
        views = {}
        for encrypt, (_, client, _) in started.items():
            views[encrypt] = px_view(client)
            views[encrypt].activate(suffix=suffix(encrypt))
        print(f"\n{n} engines: start {started[False][2]:.0f} ms plain, {started[True][2]:.0f} ms encrypted")
        operations = {
            "%%px no-op": (partial(px_noop, shell), 1),
            f"push {args.mib} MiB": (partial(push, data), 4),
        }
        for name, (operation, weight) in operations.items():
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(max(1, args.repeat // weight)):
                for encrypt in order:
                    times[encrypt].append(measure(partial(operation, views[encrypt], encrypt)))
            plain, encrypted = (statistics.median(times[e]) for e in (False, True))
            verdicts.append(encrypted / plain <= GOAL)
            print(
                f"  {name:<12} plain {plain:8.1f} ({min(times[False]):.1f}-{max(times[False]):.1f})"
                f"  encrypted {encrypted:8.1f} ({min(times[True]):.1f}-{max(times[True]):.1f})"
                f"  x{encrypted / plain:.2f}",
                flush=True,
            )
        for cluster, _, _ in started.values():
            cluster.stop()
    print(f"\nencryption costs <= x{GOAL} on %%px no-op and push: {'met' if all(verdicts) else 'NOT met'}")


if __name__ == "__main__":
    main()
