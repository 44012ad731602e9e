"""pytest fixtures

ipyparallel 9.2.0's ``ipyparallel/tests/conftest.py`` (Modified BSD License, IPython Development
Team: COPYING.md), cut to what ``test_view.py`` and ``test_magics.py`` use; ``cluster`` starts an
ipcmagic cluster (this package's ``setup``), ``ipython`` first drops a shell other tests left.
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from tempfile import NamedTemporaryFile, TemporaryDirectory
from unittest import mock

import ipyparallel as ipp
import IPython.paths
import pytest
import zmq
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.profiledir import ProfileDir
from IPython.terminal.interactiveshell import TerminalInteractiveShell
from traitlets.config import Config

from ..conftest import require
from . import VENDORED, setup, teardown


def default_config():
    """Return a config object with good defaults for testing."""
    config = Config()
    config.TerminalInteractiveShell.colors = "NoColor"
    config.TerminalTerminalInteractiveShell.term_title = (False,)
    config.TerminalInteractiveShell.autocall = 0
    f = NamedTemporaryFile(suffix="test_hist.sqlite", delete=False)
    config.HistoryManager.hist_file = str(Path(f.name))
    f.close()
    config.HistoryManager.db_cache_size = 10000
    return config


@contextmanager
def temporary_ipython_dir(prefix=None):
    td_obj = TemporaryDirectory(suffix=".ipython", prefix=prefix)
    td = td_obj.name
    with mock.patch.dict(os.environ, {"IPYTHONDIR": td}):
        assert IPython.paths.get_ipython_dir() == td
        ProfileDir.create_profile_dir_by_name(td, name="default")
        try:
            yield td
        finally:
            try:
                td_obj.cleanup()
            except Exception as e:
                print(f"Failed to cleanup {td}: {e}", file=sys.stderr)


@pytest.fixture(autouse=True, scope="module")
def vendored_release():
    why = f"these are ipyparallel {VENDORED}'s tests, not {ipp.__version__}'s: vendor that release's"
    require(ipp.__version__ == VENDORED, why)


@pytest.fixture(autouse=True, scope="module")
def ipython_dir(request, vendored_release):
    with temporary_ipython_dir() as ipython_dir:
        yield ipython_dir


@pytest.fixture(scope="module")
def cluster(request, ipython_dir):
    """An ipcmagic cluster, which the tests' clients reach through the iptest profile."""
    setup()
    try:
        yield
    finally:
        teardown()


@pytest.fixture(scope="module")
def ipython(ipython_dir):
    InteractiveShell.clear_instance()  # another test module's shell
    config = default_config()
    config.TerminalInteractiveShell.simple_prompt = True
    shell = TerminalInteractiveShell.instance(config=config)
    yield shell
    TerminalInteractiveShell.clear_instance()


@pytest.fixture()
def ipython_interactive(request, ipython):
    """Activate IPython's builtin hooks for the duration of the test scope."""
    with ipython.builtin_trap:
        yield ipython


@pytest.fixture(autouse=True)
def Context():
    ctx = zmq.Context.instance()
    try:
        yield ctx
    finally:
        ctx.destroy()
