"""The job's environment is the site's: a batch script (batchspawner's ``--export={{keepvars}}``
sets SLURM_EXPORT_ENV) or the kernel's own step leaves srun input variables that every srun the
kernel starts would apply. ipcmagic's engine and ``%%torchrun`` steps work whatever they say."""

from __future__ import annotations

import os
import subprocess

import pytest

import ipcmagic
from ipcmagic.base.errors import ClusterError
from ipcmagic.base.slurm import FOREIGN_STEP_VARS, step_env
from ipcmagic.cluster.launchers import SrunEngineSetLauncher
from tests.conftest import run_in_job

#: a value of each variable that breaks a plain ``srun --overlap -n 2`` in the test allocation
#: (8 CPUs, no GPUs), as Slurm 22.05 reacts to it
BREAKING = {
    "SLURM_EXPORT_ENV": "PATH,SLURM_CONF",  # the tasks lose every other variable
    "SRUN_EXPORT_ENV": "PATH,SLURM_CONF",
    "SLURM_STDOUTMODE": "/dev/null",  # the tasks' output goes to a file
    "SLURM_STDINMODE": "/nonexistent",
    "SLURM_WORKING_DIR": "/nonexistent",
    "SRUN_CPUS_PER_TASK": "16",  # More processors requested than permitted
    "SLURM_EXCLUSIVE": "1",
    "SLURM_DISTRIBUTION": "plane",
    "SLURM_THREADS_PER_CORE": "2",
    "SLURM_GPUS_PER_TASK": "1",  # the job has no GPUs (a GPU job's value would shape the step)
    "SLURM_GPUS": "1",
    "SLURM_GPUS_PER_NODE": "1",
    "SLURM_GRES": "gpu:1",
    "SLURM_STEP_GRES": "gpu:1",
    "SLURM_CPUS_PER_GPU": "2",
    "SLURM_MEM_PER_GPU": "1000",
    "SLURM_NTASKS_PER_GPU": "1",
}
PROBE = 'echo "rank=$SLURM_PROCID probe=${IPCMAGIC_PROBE:-lost} cwd=$PWD"'


def test_every_breaking_variable_is_neutralised():
    assert set(BREAKING) <= FOREIGN_STEP_VARS
    env = {**BREAKING, "SLURM_JOB_ID": "7", "SLURM_CONF": "/c", "SLURM_MPI_TYPE": "pmix", "HOME": "/h"}
    assert step_env(env) == {"SLURM_JOB_ID": "7", "SLURM_CONF": "/c", "SLURM_MPI_TYPE": "pmix", "HOME": "/h"}


def test_engine_launcher_unsets_what_the_job_left(monkeypatch):
    monkeypatch.setenv("SLURM_EXPORT_ENV", "PATH")
    monkeypatch.setenv("SLURM_CPU_BIND", "quiet,mask_cpu:0x1")  # the kernel's own step's mask
    launcher = SrunEngineSetLauncher(cluster_id="c")
    launcher.n = 2
    assert launcher.args[:4] == ["env", "--unset=SLURM_CPU_BIND", "--unset=SLURM_EXPORT_ENV", "srun"]


@pytest.mark.parametrize("name", sorted(BREAKING))
def test_the_value_breaks_a_plain_srun(in_allocation, tmp_path, name):
    """Each variable tested below is a real threat: a plain srun with it fails, loses output,
    the working directory or the environment."""
    env = {**os.environ, "IPCMAGIC_PROBE": "here", name: BREAKING[name]}
    out = subprocess.run(
        ["srun", "--overlap", "-n", "2", "bash", "-c", PROBE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    fine = {f"rank={rank} probe=here cwd={tmp_path}" for rank in (0, 1)}
    assert out.returncode != 0 or set(out.stdout.splitlines()) != fine, out.stdout + out.stderr


def test_engines_and_torchrun_start_whatever_the_job_left(
    ip, in_allocation, torch_installed, monkeypatch, capsys
):
    for name, value in BREAKING.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IPCMAGIC_PROBE", "here")
    ip.run_line_magic("ipcluster", "start -n 2")
    seen = ipcmagic.client()[:].apply_sync(lambda: __import__("os").environ.get("IPCMAGIC_PROBE"))
    assert seen == ["here", "here"]
    ip.run_line_magic("ipcluster", "stop")
    ip.run_cell_magic("torchrun", "-n 2", "import os; print('probe', os.environ.get('IPCMAGIC_PROBE'))")
    assert capsys.readouterr().out.count("probe here") == 2


def test_engines_without_ipcmagics_environment_say_so(ip, in_allocation):
    """An export list in the site's configuration still wins (--launcher-args refuses one at once,
    tests/test_plan.py); the error names the cause, not --timeout."""
    site = ipcmagic._magics.cluster.config.SrunEngineSetLauncher
    site.mpi_args = ["--export=PATH,SLURM_CONF"]
    try:
        with pytest.raises(ClusterError, match="did not receive ipcmagic's environment") as failure:
            ip.run_line_magic("ipcluster", "start -n 2 --timeout 6")
    finally:
        site.pop("mpi_args")
    assert "raise --timeout" not in str(failure.value)


#: a kernel whose own step is bound to one core: its engines and ranks, as it starts them
BOUND_KERNEL = """
import os, ipcmagic
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
print("kernel", sorted(os.sched_getaffinity(0)))
ip.run_line_magic("ipcluster", "start -n 2")
for cpus in ipcmagic.client()[:].apply_sync(lambda: sorted(__import__("os").sched_getaffinity(0))):
    print("engine", cpus)
ip.run_line_magic("ipcluster", "stop")
ip.run_cell_magic("torchrun", "-n 2", "import os; print('rank', sorted(os.sched_getaffinity(0)))")
"""


def test_the_kernels_cpu_mask_stays_the_kernels(two_nodes, torch_installed, nothing_left):
    """A step bound with --cpu-bind leaves SLURM_CPU_BIND=quiet,mask_cpu:0x1 to the kernel; srun
    would pin every engine and rank to the kernel's one core (measured on this lab)."""
    lines = run_in_job(
        ["-N", "1", "-n", "4", "-J", "ipcmagic-bound"],
        ["-n", "1", "--cpu-bind=cores"],
        BOUND_KERNEL,
        two_nodes,
    ).splitlines()
    assert "kernel [0]" in lines, lines
    started = [
        line.split(" ", 1)[1] for line in lines if line.startswith(("engine ", "[0] rank ", "[1] rank "))
    ]
    assert len(started) == 4 and "[0]" not in started, lines
