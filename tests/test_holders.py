"""Who else holds this node: two notebooks' kernels in one job step, as JupyterLab runs them (the
server's step), on the 1-node lab; the first holds 2 engines on 2 GPUs, the second starts its own
cluster and a %%torchrun run, and is told about the first's each time."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("slurm", "nothing_left")

KERNEL = r"""
import sys, time, pathlib
from IPython.core.interactiveshell import InteractiveShell
import ipcmagic
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
me, here, first_start = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
def wait_for(name):
    while not (here / name).exists():
        time.sleep(0.1)
if me == "first":
    ip.run_line_magic("ipcluster", first_start)
    (here / "started").touch()
    wait_for("done")
    ip.run_line_magic("ipcluster", "stop")
else:
    wait_for("started")
    print("STATUS 1")
    ip.run_line_magic("ipcluster", "status")
    print("START")
    ip.run_line_magic("ipcluster", "start -n 2")
    print("STATUS 2")
    print(ipcmagic._magics.cluster.status())
    print("TORCHRUN")
    ip.run_cell_magic("torchrun", "-n 1", "pass")
    ipcmagic._magics.cluster.name_holders = False  # c.IPCluster.name_holders = False
    print("TORCHRUN QUIET")
    ip.run_cell_magic("torchrun", "-n 1", "pass")
    print("END")
    ip.run_line_magic("ipcluster", "stop")
    (here / "done").touch()
"""

FIRST = "another notebook of yours (first.ipynb) holds 2 engines on "


@pytest.mark.parametrize(
    ("first_start", "where"),
    [
        ("start -n 2 --gpus-per-engine 1", "GPUs 0,1 of "),  # an srun step: Slurm's, and its tasks'
        ("start -n 2 --launcher local", "GPUs 0,1 of this node"),  # its controller and engines
    ],
)
def test_the_second_notebook_is_told_of_the_first(first_start, where):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as here:
        kernel = f"{sys.executable} -u -c {shlex.quote(KERNEL)}"  # -u: stdout and stderr in order
        both = (
            f"JPY_SESSION_NAME=/home/u/first.ipynb {kernel} first {here} {shlex.quote(first_start)} & "
            f"JPY_SESSION_NAME=/home/u/second.ipynb {kernel} second {here} - >{here}/second.out 2>&1; wait"
        )
        done = subprocess.run(
            ["salloc", "-Q", "-n", "6", "--gres=gpu:2", "-J", "ipcmagic-holders"]
            + ["srun", "-n", "1", "bash", "-c", both],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        out = (Path(here) / "second.out").read_text()
    assert done.returncode == 0, done.stdout + done.stderr + out
    first = FIRST + where
    parts = _split(out, ["STATUS 1", "START", "STATUS 2", "TORCHRUN", "TORCHRUN QUIET", "END"])
    assert parts["STATUS 1"].startswith("No cluster is running.\n" + first), out
    assert ("ipcmagic: " + first) in parts["START"] and parts["START"].count("ipcmagic: ") == 1, out
    assert first in parts["STATUS 2"] and "cluster " in parts["STATUS 2"], out
    assert ("ipcmagic: " + first) in parts["TORCHRUN"], out
    assert "ipcmagic:" not in parts["TORCHRUN QUIET"], out


def _split(text: str, marks: list[str]) -> dict[str, str]:
    """What follows each mark's line in ``text``, up to the next mark's."""
    starts = [text.index(mark + "\n") for mark in marks] + [len(text)]
    return {
        mark: text[start + len(mark) + 1 : end]
        for mark, start, end in zip(marks, starts, starts[1:], strict=False)
    }
