"""The allocation as the environment describes it: hostlists, CPU counts, task counts."""

import pytest

from ipcmagic.base.slurm import Allocation, expand_counts, expand_hostlist


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("vm", ["vm"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("nid[001-003,007]", ["nid001", "nid002", "nid003", "nid007"]),
        ("a[1-2],b3,c[9-10]", ["a1", "a2", "b3", "c9", "c10"]),
        ("rack[1-2]-n[0-1]", ["rack1-n0", "rack1-n1", "rack2-n0", "rack2-n1"]),
        ("", []),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def test_expand_counts():
    assert expand_counts("4(x2),2") == [4, 4, 2]
    assert expand_counts("16") == [16]
    with pytest.raises(ValueError):
        expand_counts("4x2")


def test_allocation_from_env():
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_CPUS_PER_NODE": "8(x2)",
        "SLURM_NTASKS": "4",
    }
    alloc = Allocation.from_env(env)
    assert alloc.nodes == ("n1", "n2") and alloc.cpus == 16 and alloc.tasks() == 4
    assert Allocation.from_env({}) is None
    in_step = Allocation.from_env({**env, "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"})
    assert in_step.env_tasks is None, "a step's SLURM_NTASKS is not the job's"


def test_tasks_of_the_job_from_inside_a_step(in_allocation):
    from tests.conftest import ALLOCATION_TASKS

    alloc = Allocation.from_env()
    assert in_allocation["SLURM_NTASKS"] == "1"
    assert alloc.tasks() == ALLOCATION_TASKS
    assert alloc.cpus == ALLOCATION_TASKS
