"""Notebooks executed by nbval in a real kernel running as a job step in a Slurm allocation."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("notebook", ["examples/quickstart.ipynb"])
def test_notebook_as_a_job_step(slurm, nothing_left, notebook):
    # what JupyterHub does: an allocation, and the kernel inside one of its job steps
    cmd = [
        "salloc",
        "-Q",
        "-n",
        "5",
        "-J",
        "ipcmagic-nbval",
        "srun",
        "-n",
        "1",
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "-p",
        "no:cacheprovider",
        "-q",
        notebook,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
