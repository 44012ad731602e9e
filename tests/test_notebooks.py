"""Example notebooks executed by nbval in a real kernel: as a job step in a Slurm allocation (the
way JupyterHub runs kernels), and outside Slurm where that is meaningful. nbval compares the
outputs of the cells tagged nbval-check-output with those the notebook is shipped with (and the
docs site shows); what a notebook shows but cannot compare (a launcher, a loss that goes down) is
checked here, by running its cells in a test's IPython shell."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipcmagic.torchrun import TorchrunError
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
        pytest.param("examples/torchrun.ipynb", marks=pytest.mark.torch),
        pytest.param("examples/torchrun_ddp.ipynb", marks=pytest.mark.torch),
        pytest.param("examples/torch_world.ipynb", marks=pytest.mark.torch),
        "examples/dask.ipynb",
    ],
)
def test_notebook_as_a_job_step(slurm, nothing_left, notebook):
    run_nbval(["salloc", "-Q", "-n", "5", "-J", "ipcmagic-nbval", "srun", "-n", "1", *NBVAL, notebook])


@pytest.mark.parametrize("notebook", ["examples/torchrun.ipynb", "examples/torchrun_ddp.ipynb"])
def test_notebook_outside_slurm(nothing_left, torch_installed, notebook):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run_nbval([*NBVAL, notebook], env)


@pytest.mark.torch  # their %%torchrun cells, their torch.distributed world
@pytest.mark.parametrize("notebook", ["examples/multinode.ipynb", "examples/torch_world.ipynb"])
def test_multinode_notebook_as_a_job_step(two_nodes, nothing_left, notebook):
    """Engines, %%torchrun and a torch.distributed world over 2 nodes, each node with its own
    network address and /tmp."""
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
        + [*NBVAL, notebook],
        # the lab's nodes have no DNS: torch's c10d warns on every rank, with a time stamp, that it
        # cannot name a peer's IPv4-mapped address (a cluster with DNS shows no such line)
        {**two_nodes, "TORCH_CPP_LOG_LEVEL": "ERROR"},
    )


def code_cells(notebook: str) -> list[str]:
    """The code of an example notebook, cell by cell, as a user runs it."""
    cells = json.loads((ROOT / notebook).read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


@pytest.mark.parametrize(("where", "launcher"), [("in_allocation", "srun"), ("outside_slurm", "ipcmagic")])
def test_torchrun_notebook_runs_on_the_launcher_it_says(
    ip, torch_installed, capsys, request, where, launcher
):
    """In an allocation the cells run as srun steps, outside Slurm on ipcmagic's standalone
    launcher (each names itself when a rank fails); the failing rank is named, the other stopped."""
    request.getfixturevalue(where)
    *cells, failing = code_cells("examples/torchrun.ipynb")
    for cell in cells:
        ip.run_cell(cell).raise_error()
    out = capsys.readouterr().out
    assert "[0] rank 0 of 2: all_reduce sum = 3" in out and "[1] rank 1 of 2: all_reduce sum = 3" in out
    failed = ip.run_cell(failing).error_in_exec
    assert isinstance(failed, TorchrunError)
    said = f"rank 1 exited with code 1; {launcher} then stopped the others: rank 0 with SIGTERM"
    assert str(failed) == said
    assert "[1] ValueError: rank 1 found no data" in capsys.readouterr().out


def test_ddp_notebook_trains_one_model_whose_loss_goes_down(ip, in_allocation, torch_installed):
    """The loss history it plots: the same on both ranks (DDP averages the gradients), a tenth of
    the first epoch's by the last."""
    cells = code_cells("examples/torchrun_ddp.ipynb")
    training = next(number for number, cell in enumerate(cells) if cell.startswith("%%torchrun"))
    ip.user_ns.pop("losses", None)
    for cell in cells[: training + 1]:
        ip.run_cell(cell).raise_error()
    losses = ip.user_ns["losses"]
    assert len(losses) == 2 and losses[0] == losses[1], "one loss per rank and epoch, the same on each rank"
    assert len(losses[0]) == ip.user_ns["epochs"] and losses[0][-1] < losses[0][0] / 10
