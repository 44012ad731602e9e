"""Example notebooks executed by nbval in a real kernel: as a job step in a Slurm allocation (the
way JupyterHub runs kernels), and outside Slurm where that is meaningful."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: --nbval-lax: outputs are compared only in cells tagged nbval-check-output, after sanitizing
NBVAL = [
    *(sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q"),
    *("--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg")),
]


def run_nbval(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.mark.parametrize(
    "notebook",
    [
        "examples/quickstart.ipynb",
        "examples/mpi4py.ipynb",
        "examples/torchrun.ipynb",
        "examples/torchrun_ddp.ipynb",
        "examples/dask.ipynb",
    ],
)
def test_notebook_as_a_job_step(slurm, nothing_left, notebook):
    run_nbval(["salloc", "-Q", "-n", "5", "-J", "ipcmagic-nbval", "srun", "-n", "1", *NBVAL, notebook])


@pytest.mark.parametrize("notebook", ["examples/torchrun.ipynb", "examples/torchrun_ddp.ipynb"])
def test_notebook_outside_slurm(nothing_left, torch_installed, notebook):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run_nbval([*NBVAL, notebook], env)


def test_multinode_notebook_as_a_job_step(two_nodes, nothing_left):
    """Engines and %%torchrun over 2 nodes, each with its own network address and /tmp."""
    run_nbval(
        [
            "salloc",
            "-Q",
            "-N",
            "2",
            "--ntasks-per-node=2",
            "-J",
            "ipcmagic-nbval",
            "srun",
            "-N",
            "1",
            "-n",
            "1",
        ]
        + [*NBVAL, "examples/multinode.ipynb"],
        two_nodes,
    )
