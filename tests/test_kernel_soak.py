"""The kernel users run does not grow with each start and stop: measured from outside a real
Jupyter kernel (jupyter_client), after a garbage collection in it (benchmarks/soak.py soaks 50)."""

from __future__ import annotations

from benchmarks.soak import cluster_cycle, growth, soak


def test_the_kernel_does_not_grow_over_20_cycles(in_allocation, nothing_left):
    """15 cycles grew a kernel by 72 fds and 19 threads: ipyparallel's event-loop thread of each
    cluster, and the magics IPython keeps of each start's view (issue 19)."""
    first, last = soak(cluster_cycle(2, "srun"), 20)
    assert growth(first, last) == [], (first, last)


def test_the_kernel_does_not_grow_over_10_torchrun_runs(in_allocation, torch_installed, nothing_left):
    first, last = soak(["%%torchrun -n 2\nimport torch"], 10)
    assert growth(first, last) == [], (first, last)
