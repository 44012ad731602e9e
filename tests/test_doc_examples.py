"""Every Python example of README.md and docs/ runs, as written, in a real kernel that runs as a job
step on the lab (as JupyterHub runs kernels), and leaves nothing behind.

An example is a ```python block, run after ``%load_ext ipcmagic``; HTML comments just before it
(invisible on the site) say how:
``<!-- doc-test: continue -->`` runs it in the kernel of the example before it,
``<!-- doc-test: skip REASON -->`` does not run it (a configuration file, hardware the lab lacks),
``<!-- doc-test: before CODE -->`` runs hidden CODE first, ``<!-- doc-test: env NAME=VALUE -->``
sets the kernel's environment. A page's first ``<!-- doc-test: job SALLOC ARGS -->`` shapes its
allocation (default ``-n 5``; ``-N 2 ...`` runs on the 2-node lab), one before a block that
example's; ``<!-- doc-test: batch -->`` runs the kernel as a batch script runs (CSCS's layout: in
the allocation, not in a step; the 1-node lab only).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.conftest import ROOT, TWO_NODE_LAB, two_node_lab_up

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_MARK = re.compile(r"<!-- doc-test: (\w+) ?(.*?) -->")


@dataclass
class Example:
    """Python blocks that run in one kernel, in order."""

    where: str
    cells: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    job: list[str] = field(default_factory=lambda: ["-n", "5"])
    #: the kernel in the allocation itself, not in a one-task step of it
    batch: bool = False


def marks_before(text: str, start: int) -> list[tuple[str, str]]:
    """The doc-test comments on the lines right above the block at ``start``."""
    lines = text[:start].rstrip("\n").split("\n")
    marks = []
    while lines and _MARK.fullmatch(lines[-1].strip()):
        marks.insert(0, _MARK.fullmatch(lines.pop().strip()).groups())
    return marks


def examples(page: Path) -> tuple[list[Example], list[str]]:
    """The page's examples, and the reasons of the blocks it skips."""
    text = page.read_text()
    job = next((shlex.split(args) for kind, args in _MARK.findall(text) if kind == "job"), None)
    found: list[Example] = []
    skipped = []
    for block in _BLOCK.finditer(text):
        marks = marks_before(text, block.start())
        kinds = dict(marks)
        if "skip" in kinds:
            skipped.append(kinds["skip"])
            continue
        line = text[: block.start()].count("\n") + 1
        if "continue" not in kinds or not found:
            own = shlex.split(kinds["job"]) if "job" in kinds else job
            found.append(
                Example(f"{page.relative_to(ROOT)}:{line}", job=own or ["-n", "5"], batch="batch" in kinds)
            )
        example = found[-1]
        example.cells += [args.replace("\\n", "\n") for kind, args in marks if kind == "before"]
        example.env.update(dict(args.split("=", 1) for kind, args in marks if kind == "env"))
        example.cells.append(block[1])
    for example in found:  # every page assumes what the quickstart did first
        example.cells.insert(0, "%load_ext ipcmagic")
    return found, skipped


ALL = [example for page in PAGES for example in examples(page)[0]]


def test_every_skipped_example_says_why():
    for page in PAGES:
        assert all(reason.strip() for reason in examples(page)[1]), page


def param(example: Example):
    """An example that runs torch (%%torchrun, ipcmagic.torchrun.launch, import torch) is marked torch."""
    runs_torch = re.search(r"\btorch", "\n".join(example.cells))
    return pytest.param(example, id=example.where, marks=pytest.mark.torch if runs_torch else ())


@pytest.mark.parametrize("example", [param(e) for e in ALL])
def test_example_runs_as_written(slurm, nothing_left, example):
    two_nodes = "-N" in example.job
    env = {**os.environ, **example.env}
    if two_nodes:
        assert two_node_lab_up(), "the 2-node lab (SLURMLAB_NODES=2 dev/slurmlab start)"
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(TWO_NODE_LAB / "etc" / "slurm.conf")
    notebook = new_notebook(cells=[new_code_cell(cell) for cell in example.cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as shared:  # seen on every node, unlike /tmp
        path = Path(shared) / "example.ipynb"
        nbformat.write(notebook, path)
        step = [] if example.batch else ["srun", "-N", "1", "-n", "1"]
        out = subprocess.run(
            ["salloc", "-Q", *example.job, "-J", "ipcmagic-docs", *step]
            + [sys.executable, str(ROOT / "dev" / "run_notebook.py"), str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
