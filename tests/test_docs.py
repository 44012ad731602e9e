"""The documentation site builds strictly with Sphinx; its reference shows every option of the
magics; the example notebooks and the JupyterLab screenshots are on it."""

from __future__ import annotations

import html
import subprocess
import sys

import pytest

from ipcmagic.magics import IPClusterMagics
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
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
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
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


def test_the_jupyterlab_screenshots_are_on_the_site(site):
    shots = {path.name for path in (ROOT / "docs" / "img").glob("*.png")}
    assert shots and shots <= {path.name for path in (site / "_images").iterdir()}
