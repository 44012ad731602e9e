"""Property: any %ipcluster or %%torchrun line either plans a start or raises UsageError.

The planning and checks are real (the allocation included); only the final launch is replaced,
so thousands of lines run in seconds. Nothing may be left behind either.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from ipcmagic.cluster.ipcluster import IPCluster
from ipcmagic.cluster.plan import EnginePlan

WORDS = [
    "start",
    "stop",
    "status",
    "-n",
    "--engines",
    "--launcher",
    "local",
    "srun",
    "mpirun",
    "auto",
    "standalone",
    "slurm",
    "-c",
    "--cpus-per-engine",
    "--mpi",
    "pmix",
    "--timeout",
    "--launcher-args",
    "--version",
    "--nnodes",
    "--port",
    "--environment",
    "--container-workdir",
    "--python",
    "--srun-args",
    "--",
    "0",
    "-1",
    "2",
    "17",
    "99999",
    "abc",
    "'",
    '"',
    "=",
    "1e3",
    "-n=2",
    "--foo",
    "script.py",
    "$HOME",
    "\\",
    "\t",
]
LINES = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), max_size=7).map(" ".join)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: a %%torchrun line asks Slurm for the job's GPUs and CPUs (0.15 s): fewer of them, in CI's budget
FUZZ_TORCHRUN = settings(FUZZ, max_examples=100)


@pytest.fixture
def planned(monkeypatch) -> list[EnginePlan]:
    plans: list[EnginePlan] = []
    monkeypatch.setattr(IPCluster, "start", lambda self, plan, timeout=None: plans.append(plan))
    return plans


@pytest.fixture
def torchrun_plans(monkeypatch) -> list:
    plans: list = []
    monkeypatch.setattr("ipcmagic.torchrun.jobs.run", lambda plan, **kwargs: plans.append(plan))
    return plans


@FUZZ
@given(line=LINES)
@example(line="start")
@example(line="start -n 4 -c 2 --mpi pmix --launcher-args='--cpu-bind=cores'")
@example(line="start --launcher local -n 3 --timeout 5")
def test_ipcluster_lines(ip, in_allocation, planned, line):
    try:
        ip.run_line_magic("ipcluster", line)
    except UsageError:
        return
    for plan in planned:
        assert plan.n >= 1 and plan.launcher in ("srun", "mpirun", "local")


@FUZZ_TORCHRUN
@given(line=LINES, cell=st.booleans())
@example(line="-n 2 --launcher srun --srun-args='--cpu-bind=none' -- --lr 1", cell=True)
@example(line="-n 2 --launcher standalone script.py --epochs 3", cell=False)
def test_torchrun_lines(ip, in_allocation, torchrun_plans, line, cell):
    try:
        if cell:
            ip.run_cell_magic("torchrun", line, "pass")
        else:
            ip.run_line_magic("torchrun", line)
    except UsageError:
        return
    for plan in torchrun_plans:
        assert plan.argv and all(isinstance(arg, str) for arg in plan.argv)
