"""The documentation site builds strictly with Sphinx; its reference shows every option of the
magics; the example notebooks, each with its outputs, and the JupyterLab screenshots are on it."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys

import pytest

from ipcmagic.magics import IPClusterMagics
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from example_outputs import missing_outputs  # noqa: E402  (the docs' own extension)


def build_site(source, out) -> subprocess.CompletedProcess:
    """sphinx-build -W as in docs/conf.py, from the repository root ``source``."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-c",
            "docs",
            ".",
            str(out),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = build_site(ROOT, out)
    assert build.returncode == 0, build.stderr
    return out


@pytest.mark.parametrize("magic", ["ipcluster", "pxtimeout", "pxwatch", "torchrun"])
def test_reference_shows_every_magic_with_its_options(site, magic):
    page = html.unescape((site / "docs" / "reference.html").read_text())
    parser = getattr(IPClusterMagics, magic).parser
    assert parser.format_usage().split()[1] == f"%{magic}" and f"%{magic} " in page
    options = [o for action in parser._actions for o in action.option_strings]
    assert [o for o in options if o not in page] == []


def test_example_notebooks_appear_with_their_outputs(site):
    """Rendered from the outputs they are shipped with (nbval checks those), not executed again."""
    page = (site / "examples" / "torchrun_ddp.html").read_text()
    assert "[0] epoch 4: loss" in page and '<img alt="../_images/' in page, "the rank's output and the plot"
    notebooks = {path.stem for path in (ROOT / "examples").glob("*.ipynb")}
    assert notebooks == {path.stem for path in (site / "examples").glob("*.html")}
    pages = {name: html.unescape((site / "examples" / f"{name}.html").read_text()) for name in notebooks}
    assert [name for name, page in pages.items() if 'class="cell_output' not in page] == []
    assert "[1] rank 1 of 2: all_reduce sum = 3" in pages["torchrun"]
    assert "[0] 4 ranks, MASTER_ADDR=n1, sum of rank + 1 = 10" in pages["multinode"]


def without_outputs(notebook: dict) -> dict:
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return notebook


@pytest.mark.parametrize("name", sorted(path.stem for path in (ROOT / "examples").glob("*.ipynb")))
def test_a_notebook_stored_without_outputs_is_told_apart(name):
    """Every example is shipped with the outputs of all its cells; stripped of them, it is told."""
    shipped = json.loads((ROOT / "examples" / f"{name}.ipynb").read_text())
    assert missing_outputs(shipped) == []
    assert missing_outputs(without_outputs(shipped)) == ["no cell has an output"]


def test_a_notebook_stored_half_run_is_told_apart():
    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    status = next(cell for cell in code if "".join(cell["source"]) == "%ipcluster status")
    status["outputs"], status["execution_count"] = [], None
    number = notebook["cells"].index(status) + 1
    assert missing_outputs(notebook) == [
        f"cell {number} was not run",
        f"cell {number} is tagged nbval-check-output but has no output",
    ]


def test_the_site_does_not_build_with_an_example_without_outputs(tmp_path):
    """A real build of a copy of the site in which one notebook lost its outputs fails, naming it."""
    for folder in ("docs", "examples"):
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("_build", "__pycache__")
        )
    notebook = tmp_path / "examples" / "torchrun.ipynb"
    notebook.write_text(json.dumps(without_outputs(json.loads(notebook.read_text()))))
    build = build_site(tmp_path, tmp_path / "site")
    assert build.returncode != 0
    assert "examples/torchrun.ipynb: no cell has an output" in build.stderr, build.stderr


def test_the_jupyterlab_screenshots_are_on_the_site(site):
    shots = {path.name for path in (ROOT / "docs" / "img").glob("*.png")}
    assert shots and shots <= {path.name for path in (site / "_images").iterdir()}
