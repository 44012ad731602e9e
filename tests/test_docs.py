"""The documentation site builds strictly, and its reference shows every option of the magics."""

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
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert build.returncode == 0, build.stderr
    return out


@pytest.mark.parametrize("magic", ["ipcluster", "pxtimeout", "pxwatch", "torchrun"])
def test_reference_shows_every_magic_with_its_options(site, magic):
    page = html.unescape((site / "reference" / "index.html").read_text())
    parser = getattr(IPClusterMagics, magic).parser
    assert parser.format_usage().split()[1] == f"%{magic}" and f"%{magic} " in page
    options = [o for action in parser._actions for o in action.option_strings]
    assert [o for o in options if o not in page] == []
