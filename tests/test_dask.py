"""%ipcluster start --dask: the engines of an srun step as a dask.distributed cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
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


#: dask's own Client, without the cluster's certificate, tries to run code as the issue's attacker did
DASK_INTRUDER = """
import sys
from distributed import Client
for address in sys.argv[1:]:
    try:
        with Client(address, timeout=2) as client:
            print("ran", client.run(lambda: "code"))
    except Exception:
        print("refused")
"""

#: another Unix user of the node tries the scheduler and every worker: plain TCP, and TLS without
#: the cluster's certificate; and reads the controller's environment, where the scheduler's key is
INTRUDER = """
import socket, ssl, sys
controller, ports = sys.argv[1], sys.argv[2:]
for port in ports:
    for tls in (False, True):
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as raw:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                sock = ctx.wrap_socket(raw) if tls else raw
                sock.sendall(b"\\x00" * 64)
                print("answered" if sock.recv(64) else "refused")
        except (OSError, ssl.SSLError):
            print("refused")
try:
    open(f"/proc/{controller}/environ").read()
    print("read the key")
except OSError:
    print("key hidden")
"""


def test_dask_refuses_anyone_without_the_clusters_certificate(ip, in_allocation):
    """Any local user ran code as the notebook's user through the scheduler (issue 19)."""
    ip.run_line_magic("ipcluster", "start -n 2 --dask")
    dask = ipcmagic.dask_client()
    scheduler = dask.scheduler.address
    assert scheduler.startswith("tls://127.0.0.1:")
    workers = list(dask.scheduler_info()["workers"])
    assert all(w.startswith("tls://127.0.0.1:") for w in workers)
    addresses = [scheduler, scheduler.replace("tls://", "tcp://"), *workers]
    out = subprocess.run(
        [sys.executable, "-c", DASK_INTRUDER, *addresses], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.splitlines() == ["refused"] * len(addresses), out.stdout + out.stderr[-3000:]
    controller = ipcmagic._magics.cluster.cluster.controller.process.pid
    ports = [a.rsplit(":", 1)[1] for a in [scheduler, *workers]]
    out = subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", INTRUDER, str(controller), *ports],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.splitlines() == ["refused"] * 2 * len(ports) + ["key hidden"], out.stderr
    assert dask.submit(sum, [1, 2, 3]).result() == 6  # the kernel's own Client works on
    ip.run_line_magic("ipcluster", "stop")


def _as_nobody(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", *argv], check=True, timeout=30)


def test_dask_keeps_its_files_where_no_other_user_can_reach(ip, in_allocation):
    """dask's default ``/tmp/dask-scratch-space`` belongs to whoever used dask on the node first:
    there another user (nobody) made it and the fallback ``-<uid>`` open to all, and chose where
    the workers' spilled data went (a directory dask also puts on ``sys.path``). Now each worker's
    and the scheduler's files are in private directories, gone after the stop."""
    shared = Path(tempfile.gettempdir(), "dask-scratch-space")
    taken = [shared, Path(f"{shared}-{os.getuid()}")]
    for directory in taken:
        shutil.rmtree(directory, ignore_errors=True)
        _as_nobody("mkdir", "-m", "0777", str(directory))
    try:
        ip.run_line_magic("ipcluster", "start -n 2 --dask")
        dask = ipcmagic.dask_client()
        places = [*dask.run(lambda dask_worker: dask_worker.local_directory).values()]
        places.append(dask.run_on_scheduler(lambda dask_scheduler: dask_scheduler.local_directory))
        for place in map(Path, places):
            private = next(p for p in place.parents if p.parent == Path(tempfile.gettempdir()))
            assert private.name.startswith("ipcmagic-"), place
            assert private.stat().st_uid == os.getuid() and private.stat().st_mode & 0o777 == 0o700
        ip.run_line_magic("ipcluster", "stop")
        assert [list(directory.iterdir()) for directory in taken] == [[], []]
    finally:
        for directory in taken:
            shutil.rmtree(directory, ignore_errors=True)
