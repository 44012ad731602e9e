"""Each of ipcmagic's reaches into ipyparallel's and ipykernel's internals falls back to the stock
behaviour when the shape it relies on changes (a new release): the cluster still starts and %%px
works (docs/internals.md).

Changes in the engine and controller programs are made by a ``sitecustomize`` on their
``PYTHONPATH``, which Python imports before anything else; changes in the kernel by monkeypatch.
"""

from __future__ import annotations

import logging
import re
from collections import deque

import ipyparallel as ipp
import psutil
import pytest
from ipyparallel import _async

import ipcmagic
from ipcmagic import plain_client
from ipcmagic.base import internals

#: what each sitecustomize changes in a new process: a shape ipcmagic's patch relies on
CHANGED = {
    "nanny": """
import ipyparallel.engine.app as app, ipyparallel.engine.nanny as nanny
original = nanny.start_nanny
def start_nanny(*, control_url, **kwargs):  # another signature, the same work
    return original(control_url=control_url, **kwargs)
nanny.start_nanny = app.start_nanny = start_nanny
""",
    "controller time": """
import time, types, ipyparallel.controller.app as app
app.time = types.SimpleNamespace(**vars(time))  # the module no longer holds time itself
""",
    "controller stop": """
import ipyparallel.controller.app as app
original = app.IPController.handle_signal
def handle_signal(self, signum, frame):  # another signature, the same work
    return original(self, signum, frame)
app.IPController.handle_signal = handle_signal
""",
    "replies": """
import ipyparallel.serialize as package, ipyparallel.serialize.serialize as serialize
original = serialize.serialize_object
def serialize_object(obj, *args, **kwargs):  # a release that cans every reply, pre-pickled or not
    return original(vars(obj) if isinstance(obj, serialize.PrePickled) else obj, *args, **kwargs)
serialize.serialize_object = package.serialize_object = serialize_object
""",
    "debugger": """
import sys
class NeedsDebugpy:  # an ipykernel.debugger that cannot import without debugpy
    def find_spec(self, name, path=None, target=None):
        if name == "ipykernel.debugger" and sys.modules.get("debugpy", 0) is None:
            raise ImportError("debugpy is required")
sys.meta_path.insert(0, NeedsDebugpy())
""",
    "stop": """
import ipyparallel.engine.app as app
original = app.IPEngine._signal_stop
def _signal_stop(self, sig, frame=None, *, why="a signal"):  # another signature, the same work
    return original(self, sig, frame)
app.IPEngine._signal_stop = _signal_stop
""",
}


def assert_px_works(ip, start: str = "start -n 2 --launcher local") -> None:
    ip.run_line_magic("ipcluster", start)
    ip.run_cell_magic("px", "", "x = 1")
    assert ipcmagic.client()[:]["x"] == [1, 1]


#: what ipcmagic.base.internals logs for each change, when its debug messages are shown
SAID = {
    "nanny": "ipyparallel.engine.nanny: the nanny is started differently than ipcmagic forks it",
    "controller time": "ipyparallel.controller.app.time: the module holds no time",
    "controller stop": "IPController.handle_signal: signals are handled differently than ipcmagic expects",
    "replies": "ipyparallel's PrePickled: it is no longer sent as it is",
    # with ipykernel 6.9, ipyparallel imports it (and debugpy) first: the fallback says so
    "debugger": "ipykernel.debugger without debugpy: ",
    "stop": "IPEngine._signal_stop: SIGTERM is handled differently than ipcmagic expects",
}
SHOW_DEBUG = """
import logging
from collections import deque
logging.getLogger("ipcmagic.base.internals").addHandler(logging.StreamHandler())
logging.getLogger("ipcmagic.base.internals").setLevel(logging.DEBUG)
"""


@pytest.mark.parametrize("change", list(CHANGED))
def test_engine_and_controller_programs_fall_back(ip, outside_slurm, tmp_path, monkeypatch, change):
    (tmp_path / "sitecustomize.py").write_text(SHOW_DEBUG + CHANGED[change])
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert_px_works(ip)
    cluster = ipcmagic.client().cluster
    said = "\n".join(la.get_output() for la in [cluster.controller, *cluster.engines.values()])
    assert re.search(rf"{re.escape(SAID[change])}.*; the stock behaviour stays", said), said
    engines = [psutil.Process(pid) for pid in ipcmagic.client()[:].apply_sync(__import__("os").getpid)]
    nannies = [" ".join(child.cmdline()) for engine in engines for child in engine.children()]
    forked = all("ipcmagic.engine" in nanny for nanny in nannies)  # a fork has its engine's command line
    assert forked == (change != "nanny"), nannies
    ip.run_line_magic("ipcluster", "stop")


def test_a_cluster_without_ipyparallels_thread_loop(ip, outside_slurm, monkeypatch, caplog):
    """Cluster._in_thread gone: each call runs on its own loop, as ipyparallel does in a terminal."""
    monkeypatch.delattr(_async.AsyncFirst, "_in_thread")
    monkeypatch.setattr(internals, "_said", set())
    with caplog.at_level(logging.DEBUG, logger="ipcmagic.base.internals"):
        assert_px_works(ip)
    assert "Cluster._in_thread: ipyparallel's Cluster has none; the stock behaviour stays" in caplog.text
    ip.run_line_magic("ipcluster", "stop")


def test_a_client_whose_build_targets_changed(ip, outside_slurm, monkeypatch):
    original = ipp.Client._build_targets

    def _build_targets(self, targets, extra=None):  # another signature, the same work
        return original(self, targets)

    monkeypatch.setattr(ipp.Client, "_build_targets", _build_targets)
    assert_px_works(ip)
    assert "_build_targets" not in vars(ipcmagic.client()), "left as ipyparallel ships it"
    ip.run_line_magic("ipcluster", "stop")


def test_a_client_whose_init_changed(ip, outside_slurm, monkeypatch):
    original = ipp.Client.__init__

    def changed(self, url_or_file=None, **kwargs):  # another signature, the same work
        original(self, url_or_file, **kwargs)

    monkeypatch.setattr(ipp.Client, "__init__", changed)
    plain_client.install(ipcmagic._magics._connection_file)
    assert ipp.Client.__init__ is changed
    assert_px_works(ip)
    ip.run_line_magic("ipcluster", "stop")


def test_a_client_without_the_broadcast_socket(ip, outside_slurm, monkeypatch, caplog):
    """%px's view pushes as ipyparallel's DirectView does: one copy per engine."""
    original = ipp.Client.__init__

    def renamed(self, *args, **kwargs):  # a release that keeps the broadcast socket elsewhere
        original(self, *args, **kwargs)
        self._fanout_stream = self.__dict__.pop("_broadcast_stream")

    monkeypatch.setattr(ipp.Client, "__init__", renamed)
    monkeypatch.setattr(internals, "_said", set())
    with caplog.at_level(logging.DEBUG, logger="ipcmagic.base.internals"):
        assert_px_works(ip)
        assert ipcmagic.view().push({"y": 2}) == [None, None]
    assert ipcmagic.client()[:]["y"] == [2, 2]
    said = "Client._broadcast_stream: the client has no broadcast socket; the stock behaviour stays"
    assert said in caplog.text
    ip.run_line_magic("ipcluster", "stop")


def test_a_client_whose_registration_callbacks_changed(ip, outside_slurm, monkeypatch, caplog):
    """No node-loss watch (the heartbeats alone tell), the cluster as before."""
    hooks = property(lambda self: self.__dict__.setdefault("_hooks", deque()))  # no list, same use
    monkeypatch.setattr(ipp.Client, "_registration_callbacks", hooks)
    monkeypatch.setattr(internals, "_said", set())
    with caplog.at_level(logging.DEBUG, logger="ipcmagic.base.internals"):
        assert_px_works(ip)
    assert ipcmagic._magics.cluster.follower.client is None
    assert "Client._registration_callbacks: it is no list; the stock behaviour stays" in caplog.text
    ip.run_line_magic("ipcluster", "stop")


def test_an_async_result_whose_streaming_changed(ip, outside_slurm, monkeypatch, caplog):
    """No fail-fast: a failing cell waits for every engine, as ipyparallel's does."""
    from ipyparallel.client.asyncresult import AsyncResult
    from ipyparallel.error import CompositeError

    from ipcmagic.cluster.failfast import FailedFast

    monkeypatch.setattr(AsyncResult, "_iopub_streaming_output_callback", lambda self, eid, msg: None)
    monkeypatch.setattr(internals, "_said", set())
    with caplog.at_level(logging.DEBUG, logger="ipcmagic.base.internals"):
        assert_px_works(ip)
        cell = "import os\nif os.getpid() == {}:\n    raise KeyError(2)\n__import__('time').sleep(1)"
        with pytest.raises(CompositeError) as failed:
            ipcmagic.view().execute(cell.format(ipcmagic.client()[1].apply_sync(__import__("os").getpid)))
    assert not isinstance(failed.value, FailedFast)
    said = "AsyncResult internals: its streaming callback, exception collection or parts changed; the"
    assert said in caplog.text
    ip.run_line_magic("ipcluster", "stop")


def test_async_results_without_caches(ip, outside_slurm, monkeypatch, caplog):
    """AsyncResult's methods no lru_caches: a stop leaves them as they are."""
    from ipyparallel.client.asyncresult import AsyncResult

    monkeypatch.setattr(AsyncResult, "__len__", AsyncResult.__len__.__wrapped__)
    monkeypatch.setattr(internals, "_said", set())
    with caplog.at_level(logging.DEBUG, logger="ipcmagic.base.internals"):
        assert_px_works(ip)
        ip.run_line_magic("ipcluster", "stop")
    assert "AsyncResult's caches: not lru_caches; the stock behaviour stays" in caplog.text


def test_a_stop_lets_the_cluster_s_results_go(ip, outside_slurm):
    from ipyparallel.client.asyncresult import AsyncResult

    assert_px_works(ip)
    assert AsyncResult.__len__.cache_info().currsize
    ip.run_line_magic("ipcluster", "stop")
    assert AsyncResult.__len__.cache_info().currsize == 0
