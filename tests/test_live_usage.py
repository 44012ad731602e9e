"""``%ipcluster status --watch``: each engine's CPU, memory and GPU use, sampled from outside the
engines (in the kernel on its node, by a collector step on the others), while they are busy; the
watch and its collector step end with the cluster."""

from __future__ import annotations

import json
import threading
import time

import pytest

import ipcmagic
from tests.conftest import run_in_job

pytestmark = pytest.mark.usefixtures("nothing_left")

#: 4 engines on 2 nodes, busy for 6 s; the watch samples them every 0.5 s
WATCHED = """
import json, subprocess, time
from IPython.core.interactiveshell import InteractiveShell
import ipcmagic
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start -n 4")
cluster = ipcmagic._magics.cluster
busy = ipcmagic.view().execute("import time\\nt = time.time()\\nwhile time.time() - t < 6: pass", block=False)
table = cluster.watch_usage(0.5)
time.sleep(3)
tic = time.perf_counter()
table.refresh()
print("REFRESH", time.perf_counter() - tic)
print("ROWS", json.dumps(table.rows))
print("CAPTION", table.caption())
steps = subprocess.run(["squeue", "--steps", "-h", "-o", "%j %N"], capture_output=True, text=True).stdout
print("STEPS", json.dumps(steps.split()))
ip.run_line_magic("ipcluster", "stop")
print("ENDED", table.ended)
"""


def test_busy_engines_on_two_nodes_are_seen_working(two_nodes):
    out = run_in_job(
        ["-N", "2", "--ntasks-per-node=2", "-J", "ipcmagic-watch"], ["-N", "1", "-n", "1"], WATCHED, two_nodes
    )
    said = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ")[0].isupper())
    rows = json.loads(said["ROWS"])
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("0", "n1", "alive"),
        ("1", "n1", "alive"),
        ("2", "n2", "alive"),
        ("3", "n2", "alive"),
    ], rows
    assert all(float(row[4]) > 20 for row in rows), rows  # busy: CPU %, 2 engines per 2-core node
    assert all(row[5].endswith("MiB") and row[6:] == ["-", "-"] for row in rows), rows  # no NVML here
    assert said["CAPTION"] == "every 0.5 s; GPU columns: no NVML on n1, n2", said
    assert "ipcmagic-usage-" in said["STEPS"] and "n2" in said["STEPS"], said  # n2's collector
    assert said["ENDED"] == "The cluster was stopped."


def test_a_terminal_watch_prints_until_the_cluster_stops(ip, outside_slurm, capsys):
    ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
    threading.Timer(2.5, ipcmagic._magics.cluster.stop).start()
    tic = time.monotonic()
    ip.run_line_magic("ipcluster", "status --watch")
    assert time.monotonic() - tic < 6
    out = capsys.readouterr().out
    assert out.count("engine  rank  host") >= 2 and out.rstrip().endswith("The cluster was stopped."), out


def test_a_watch_follows_the_engines_of_a_restart(ip, outside_slurm):
    ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
    cluster = ipcmagic._magics.cluster
    table = cluster.watch_usage(0.2)
    before = {row["pid"] for row in table.roster.values()}
    ip.run_line_magic("ipcluster", "restart")
    table.refresh()
    assert {row["pid"] for row in table.roster.values()}.isdisjoint(before)
    assert [row[3] for row in table.rows] == ["alive", "alive"] and not table.ended
    ip.run_line_magic("ipcluster", "stop")
    assert table.ended == "The cluster was stopped."
