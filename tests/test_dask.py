"""%ipcluster start --dask: the engines of an srun step as a dask.distributed cluster."""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import ipcmagic


def test_dask_workers_on_the_engines(ip, in_allocation, capsys):
    ip.run_line_magic("ipcluster", "start -n 2 -c 2 --dask")
    out = capsys.readouterr().out
    dask = ipcmagic.dask_client()
    assert f"dask.distributed: 2 workers, scheduler {dask.scheduler.address}, dashboard http" in out
    engines = ipcmagic.client()[:].apply_sync(lambda: __import__("os").getpid())
    assert sorted(dask.run(lambda: __import__("os").getpid()).values()) == sorted(engines)
    assert list(dask.nthreads().values()) == [2, 2], "-c sets each worker's threads"
    assert sum(dask.gather(dask.map(lambda x: x * x, range(10)))) == 285
    with urllib.request.urlopen(dask.dashboard_link, timeout=30) as page:
        assert page.status == 200

    ip.run_line_magic("ipcluster", "restart")
    assert ipcmagic.dask_client() is dask, "the same Client goes on, with the new engines as workers"
    engines = ipcmagic.client()[:].apply_sync(lambda: __import__("os").getpid())
    assert sorted(dask.run(lambda: __import__("os").getpid()).values()) == sorted(engines)
    assert dask.submit(sum, [1, 2, 3]).result() == 6
    capsys.readouterr()
    ip.run_line_magic("ipcluster", "status")
    assert "dask.distributed: 2 workers" in capsys.readouterr().out

    ip.run_line_magic("ipcluster", "stop")
    assert dask.status == "closed"
    with pytest.raises(RuntimeError, match="start one with %ipcluster start --dask"):
        ipcmagic.dask_client()
    assert not list(Path(tempfile.gettempdir()).glob("dask-scratch-space/worker-*"))


def test_dask_missing_is_a_usage_error(ip, in_allocation, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(UsageError, match=r"pip install 'ipcmagic\[dask\]'"):
        ip.run_line_magic("ipcluster", "start -n 1 --dask")
