"""The launch plan: what a magic line turns into, without running anything."""

import shlex
import sys

import pytest
from IPython.core.error import UsageError

from ipcmagic.base.addresses import address_towards
from ipcmagic.base.errors import ClusterError
from ipcmagic.base.slurm import Allocation
from ipcmagic.cluster.gpus import gpu_sets
from ipcmagic.cluster.launchers import MpirunEngineSetLauncher, SrunEngineSetLauncher
from ipcmagic.cluster.plan import EnginePlan, plan_engines
from ipcmagic.cluster.roster import engine_row, split_worlds
from ipcmagic.cluster.status import cpu_ranges
from ipcmagic.magics import IPClusterMagics, _parse

ALLOC = Allocation(job_id="42", nodes=("n1",), cpus_per_node=(8,), env_tasks=6)


def launcher_args(plan: EnginePlan) -> list[str]:
    launcher = plan.launcher_class(cluster_id="abc", profile_dir="/p", **plan.traits)
    launcher.n = plan.n
    return launcher.args


def test_auto_is_srun_inside_an_allocation_with_its_task_count():
    plan = plan_engines(ALLOC)
    assert (plan.launcher, plan.n) == ("srun", 6)
    args = launcher_args(plan)
    assert args[:6] == ["srun", "-n", "6", "--cpus-per-task=1", "--job-name=ipcmagic-abc", "--overlap"]
    assert args[6:10] == ["--distribution=block", sys.executable, "-m", "ipcmagic.engine"] and "--mpi" in args


def test_auto_is_local_outside_slurm():
    plan = plan_engines(None, n=3)
    assert (plan.launcher, plan.n, plan.traits["delay"]) == ("local", 3, 0.0)


def test_srun_options_and_passthrough():
    plan = plan_engines(ALLOC, n=2, cpus_per_engine=4, mpi="pmix", launcher_args="--cpu-bind=cores -x 'a b'")
    args = launcher_args(plan)
    assert args[:9] == [
        "srun",
        "-n",
        "2",
        "--cpus-per-task=4",
        "--job-name=ipcmagic-abc",
        "--overlap",
        "--mpi=pmix",
        "--distribution=block",
        "--cpu-bind=cores",
    ]
    assert args[9:11] == ["-x", "a b"], "user options come after ours, so they win"


def test_srun_without_overlap_by_config():
    launcher = SrunEngineSetLauncher(cluster_id="c", overlap=False, mpi_cmd=["/opt/slurm/bin/srun"])
    launcher.n = 1
    assert launcher.args[0] == "/opt/slurm/bin/srun" and "--overlap" not in launcher.args


def test_magic_lines_are_split_as_a_shell_would():
    from ipcmagic.magics import IPClusterMagics, _parse

    args = _parse(IPClusterMagics.ipcluster, """start --launcher-args "--cpu-bind=none -x 'a b'" """)
    assert shlex.split(args.launcher_args) == ["--cpu-bind=none", "-x", "a b"], "not one word for srun"
    assert (
        _parse(IPClusterMagics.ipcluster, 'start --launcher-args "--exclusive"').launcher_args
        == "--exclusive"
    )
    with pytest.raises(UsageError, match="check the quotes"):
        _parse(IPClusterMagics.ipcluster, 'start --launcher-args "--x')


def test_quotes_inside_a_word_are_a_shell_s_quotes():
    """Before (issue 30, item 8): ``No closing quotation``, ``unrecognized arguments: --mem=0"``, and
    ``'a b'c`` two words for a script."""
    from ipcmagic.magics import IPClusterMagics, _parse

    line = 'start --launcher-args="--exclusive --mem=0"'
    assert _parse(IPClusterMagics.ipcluster, line).launcher_args == "--exclusive --mem=0"
    assert _parse(IPClusterMagics.torchrun, "--srun-args=\"--x='y z'\"").srun_args == "--x='y z'"
    script = _parse(IPClusterMagics.torchrun, "train.py 'a b'c --lr=\"1e-3\" \\'x")
    assert script.args == ["train.py", "a bc", "--lr=1e-3", "'x"]


def test_stale_job_id_is_a_usage_error(slurm):
    with pytest.raises(UsageError, match="Slurm does not know job 999999 of this kernel's SLURM_JOB_ID"):
        Allocation(job_id="999999", nodes=("vm",)).tasks()


def test_mpirun_plan():
    plan = plan_engines(None, launcher="mpirun", n=3, launcher_args="--oversubscribe")
    assert plan.launcher_class is MpirunEngineSetLauncher
    args = launcher_args(plan)
    assert args[:4] == ["mpirun", "-n", "3", "--oversubscribe"] and "--mpi" in args


def test_local_plan_passes_args_to_the_engines():
    plan = plan_engines(None, launcher="local", n=2, launcher_args="--log-level=DEBUG")
    assert plan.traits["engine_args"] == ["--log-level=DEBUG"]


@pytest.mark.parametrize(
    "alloc, kwargs, message",
    [
        (ALLOC, {"n": 0}, "at least 1"),
        (ALLOC, {"n": -1}, "at least 1"),
        (ALLOC, {"n": 9}, "need 9 CPUs, but this allocation has 8; use -n 8"),
        (ALLOC, {"n": 3, "cpus_per_engine": 3}, "use -n 2 or fewer"),
        (ALLOC, {"n": 1, "cpus_per_engine": -2}, "at least 1 CPU"),
        (ALLOC, {"launcher": "slurm"}, "Unknown launcher 'slurm'"),
        (None, {"launcher": "srun", "n": 2}, "needs a Slurm allocation"),
        (None, {"launcher": "local", "n": 2, "cpus_per_engine": 2}, "srun and mpirun launchers only"),
        (None, {"launcher": "mpirun", "n": 2, "mpi": "pmix"}, "srun launcher only"),
        (ALLOC, {"n": 2, "launcher_args": "'unclosed"}, "not valid shell syntax"),
    ],
)
def test_bad_requests_raise_usage_errors(alloc, kwargs, message):
    with pytest.raises(UsageError, match=message):
        plan_engines(alloc, **kwargs)


def test_magic_help_documents_every_option():
    from ipcmagic.magics import IPClusterMagics

    doc = IPClusterMagics.ipcluster.__doc__
    for option in ["-n", "--launcher", "-c", "--mpi", "--timeout", "--launcher-args", "--version", "srun"]:
        assert option in doc


def test_entry_points_make_srun_a_cluster_engine_name():
    import ipyparallel as ipp

    cluster = ipp.Cluster(engines="srun", log_level=50)
    assert cluster.engine_launcher_class is SrunEngineSetLauncher
    assert ipp.Cluster(engines="mpirun").engine_launcher_class is MpirunEngineSetLauncher


def test_split_worlds():
    def rows(*sizes):
        return [engine_row(i, "alive", rank=0, size=size) for i, size in enumerate(sizes)]

    assert split_worlds(rows(3, 3, 3), 3) is None
    assert split_worlds(rows(None, None), 2) is None, "engines without mpi4py are not checked"
    assert "sizes [1], not 2" in split_worlds(rows(1, 1), 2)


def test_address_towards():
    assert address_towards(["no-such-host.invalid", "localhost"]) == "127.0.0.1"
    with pytest.raises(ClusterError, match="controller_ip"):
        address_towards(["no-such-host.invalid"])


def test_cpu_ranges():
    assert cpu_ranges({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
    assert cpu_ranges({5}) == "5" and cpu_ranges(set()) == ""


def test_binding_options_reach_srun():
    args = launcher_args(plan_engines(ALLOC, n=2, cpu_bind="cores", gpus_per_engine=2))
    assert args[6:9] == ["--cpu-bind=cores", "--gpus-per-task=2", "--distribution=block"]
    assert plan_engines(ALLOC, n=2, gpus_per_engine=2).gpus == 0, "Slurm hands the GPUs out"


def test_mpirun_binds_cores_for_cpus_per_engine():
    args = launcher_args(plan_engines(None, launcher="mpirun", n=2, cpus_per_engine=4))
    assert args[:7] == ["mpirun", "-n", "2", "--map-by", "slot:PE=4", "--bind-to", "core"]
    assert "--map-by" not in launcher_args(plan_engines(None, launcher="mpirun", n=2))


@pytest.mark.parametrize("launcher", ["mpirun", "local"])
def test_ipcmagic_hands_out_gpus_without_slurm(launcher):
    assert plan_engines(None, launcher=launcher, n=2, gpus_per_engine=3).gpus == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"launcher": "local", "cpus_per_engine": 2}, "srun and mpirun launchers only"),
        ({"launcher": "mpirun", "cpu_bind": "cores"}, "srun launcher only"),
        ({"launcher": "local", "gpus_per_engine": -1}, "0 or more"),
    ],
)
def test_bad_binding_requests(kwargs, message):
    with pytest.raises(UsageError, match=message):
        plan_engines(None, n=2, **kwargs)


def test_gpu_sets_by_place_on_each_host():
    def row(i, host, gpus=""):
        return engine_row(i, "alive", host=host, gpus=gpus)

    rows = [row(0, "a"), row(1, "a"), row(2, "b"), row(3, "b")]
    assert gpu_sets(rows, 1) == {0: "0", 1: "1", 2: "0", 3: "1"}
    assert gpu_sets(rows[::-1], 2) == {0: "0,1", 1: "2,3", 2: "0,1", 3: "2,3"}, "by engine id"
    assert gpu_sets([row(0, "a", "4,6"), row(1, "a", "4,6")], 1) == {0: "4", 1: "6"}
    with pytest.raises(ValueError, match="2 engines on a need 4 GPUs, but CUDA_VISIBLE_DEVICES there"):
        gpu_sets([row(0, "a", "4,6"), row(1, "a", "4,6")], 2)


def test_a_trailing_comment_is_not_an_argument():
    """``%ipcluster start -n 4   # four engines``, as the docs annotate magics: an UsageError before."""
    args = _parse(IPClusterMagics.ipcluster, 'start -n 4   # four engines, "quoted" too')
    assert (args.action, args.n) == ("start", 4)
    assert _parse(IPClusterMagics.ipcluster, "start --launcher-args '-x #y'").launcher_args == "-x #y"
    assert _parse(IPClusterMagics.ipcluster, "start --cpu-bind map#1").cpu_bind == "map#1"


@pytest.mark.parametrize("words", ["--export=NONE", "--export NONE", "--export=HOME,PATH", "-l --export=nil"])
def test_an_export_that_drops_the_kernels_environment_is_named_at_once(words, ip, in_allocation):
    """--launcher-args "--export=NONE" failed after the full 60 s start timeout; --srun-args
    "--export=NONE" with no hint (a rank cannot reach the kernel)."""
    with pytest.raises(UsageError, match="keeps the kernel's environment from the step.*--export=ALL,"):
        plan_engines(ALLOC, launcher="srun", n=2, launcher_args=words)
    with pytest.raises(UsageError, match="--srun-args has --export="):
        ip.run_cell_magic("torchrun", f"-n 1 --srun-args '{words}'", "pass")
    plan = plan_engines(ALLOC, launcher="srun", n=2, launcher_args="--export=ALL,OMP_NUM_THREADS=4")
    assert plan.traits["mpi_args"] == ["--export=ALL,OMP_NUM_THREADS=4"]


def test_dask_names_what_is_missing(monkeypatch):
    """With distributed installed but cryptography missing, it said dask.distributed was missing."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", {"distributed": "a module spec"}.get)
    with pytest.raises(UsageError, match=r"^--dask needs cryptography \(for its TLS certificate\) in this"):
        plan_engines(None, launcher="local", n=2, dask=True)
