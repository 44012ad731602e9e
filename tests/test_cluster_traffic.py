"""A cluster's traffic under attack by another user of the node (nobody), who knows only its ports:
CurveZMQ on every connection, so no cell, no output and no stray bytes get through."""

from __future__ import annotations

import os
import subprocess

import psutil
import pytest

import ipcmagic
from tests.conftest import run_in_job

#: nobody's ZMQ peer, from the standard library: ZMTP 3.0 with the NULL mechanism (no keys) as a
#: SUB socket subscribed to everything, on every port at once; prints what each port did with it.
#: ``noise`` sends 4 KiB of random bytes instead.
INTRUDER = """
import concurrent.futures, os, socket, struct, sys, time
def exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data
def frame(sock):
    flags = exactly(sock, 1)[0]
    size = struct.unpack("!Q", exactly(sock, 8))[0] if flags & 2 else exactly(sock, 1)[0]
    return exactly(sock, size)
mode, secret, ports = sys.argv[1], sys.argv[2].encode(), sys.argv[3:]
def probe(port):
    sock = socket.create_connection((os.environ["HOST"], int(port)), timeout=2)
    if mode == "noise":
        sock.sendall(os.urandom(4096))
        return "sent"
    sock.sendall(b"\\xff" + b"\\0" * 8 + b"\\x7f\\x03\\x00" + b"NULL".ljust(20, b"\\0") + b"\\0" * 32)
    try:
        mechanism = exactly(sock, 64)[12:32].rstrip(b"\\0").decode()
        if mechanism != "NULL":
            return mechanism
        ready = b"\\x05READY\\x0bSocket-Type" + struct.pack("!I", 3) + b"SUB"
        sock.sendall(bytes([4, len(ready)]) + ready)
        frame(sock)  # the port's READY
        sock.sendall(b"\\x00\\x01\\x01")  # subscribe to every topic
        seen, end = b"", time.monotonic() + float(os.environ["LISTEN_S"])
        while time.monotonic() < end:
            try:
                seen += frame(sock)
            except socket.timeout:
                pass
        return "read the secret" if secret in seen else "read nothing"
    except (ConnectionError, OSError):
        return "closed"
with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:  # all at once, while the cells run
    print("\\n".join(pool.map(probe, ports)))
"""
SECRET = "the-notebooks-secret-42"


def cluster_ports() -> list[int]:
    """Every TCP port the cluster's processes (controller, engines, their children) listen on."""
    cluster_id = ipcmagic._magics.cluster.cluster.cluster_id
    ports = set()
    for proc in psutil.process_iter(["environ"]):
        if (proc.info["environ"] or {}).get("IPP_CLUSTER_ID") == cluster_id:
            ports |= {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return sorted(ports)


def nobody(mode: str, ports: list[int], listen_s: float = 0, host: str = "127.0.0.1", on: list[str] = ()):
    """The intruder as user nobody (``on``: the command that puts it on another node)."""
    intruder = ["/usr/bin/python3", "-c", INTRUDER, mode, SECRET, *map(str, ports)]
    env = {**os.environ, "LISTEN_S": str(listen_s), "HOST": host}
    argv = [*on, "runuser", "-u", "nobody", "--", *intruder]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("encrypt", [True, False])
def test_no_other_user_reads_a_cell_or_its_output(ip, in_allocation, capsys, encrypt):
    """Subscribing to the controller's iopub needed no key: another user read each %%px cell's
    code and output (the HMAC signs, it does not hide). Encrypted (the default), every port of the
    cluster refuses a peer without its keys; without, the same intruder reads the secret."""
    ipcmagic._magics.cluster.encrypt = encrypt
    try:
        ip.run_line_magic("ipcluster", "start -n 2")
        ports = cluster_ports()
        intruder = nobody("listen", ports, listen_s=6)
        for _ in range(8):
            ip.run_cell_magic("px", "", f"print({SECRET!r})\nimport time; time.sleep(0.5)")
        said, errors = intruder.communicate(timeout=120)
    finally:
        ipcmagic._magics.cluster.encrypt = True
    assert capsys.readouterr().out.count(SECRET) == 16
    if encrypt:
        assert set(said.split("\n")) <= {"closed", "CURVE", ""} and len(said.split()) == len(ports), (
            said + errors
        )
    else:
        assert "read the secret" in said, said + errors


def test_stray_bytes_wedge_nothing(ip, in_allocation, capsys):
    """4 KiB of random bytes on the engines' iopub port ended all later %%px output (the client
    logged ``DELIM not in msg_list``); restart did not mend it. Now they meet CurveZMQ's handshake."""
    ip.run_line_magic("ipcluster", "start -n 2")
    capsys.readouterr()
    assert ipcmagic.client().session.key, "signed too (ipcmagic.cluster.encryption)"
    intruder = nobody("noise", cluster_ports())
    assert intruder.communicate(timeout=120)[1] == ""
    ip.run_cell_magic("px", "", "print('still here')")
    assert capsys.readouterr().out.count("still here") == 2


#: in a job of the 2-node lab, the kernel on n1: nobody on n2 listens to the controller's ports
#: (on n1's address) during %%px cells that print a secret, then sends them noise
ACROSS_NODES = """
import sys
from IPython.core.interactiveshell import InteractiveShell
import psutil
from tests.test_cluster_traffic import SECRET, nobody
import ipcmagic
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start -n 4")
cluster = ipcmagic._magics.cluster
controller, host = cluster.cluster.controller.process.pid, cluster.cluster.controller_ip
listening = psutil.Process(controller).net_connections("tcp")
ports = sorted({c.laddr.port for c in listening if c.status == psutil.CONN_LISTEN and c.laddr.ip == host})
on_n2 = ["nsenter", "--net=/run/netns/ipcm-n2"]
intruder = nobody("listen", ports, listen_s=6, host=host, on=on_n2)
for _ in range(8):
    ip.run_cell_magic("px", "", f"print({SECRET!r})\\nimport time; time.sleep(0.5)")
said, errors = intruder.communicate(timeout=120)
print("listened:", ",".join(said.split()) or errors)
nobody("noise", ports, host=host, on=on_n2).communicate(timeout=120)
ip.run_cell_magic("px", "", "import socket; print('still here on', socket.gethostname())")
ip.run_line_magic("ipcluster", "stop")
"""


def test_no_other_user_on_another_node_reads_or_wedges_anything(two_nodes, nothing_left):
    out = run_in_job(["-N", "2", "--ntasks-per-node=2"], ["-N", "1", "-n", "1"], ACROSS_NODES, two_nodes)
    assert out.count(SECRET) == 32
    listened = next(line for line in out.splitlines() if line.startswith("listened:"))
    assert set(listened.removeprefix("listened: ").split(",")) <= {"closed", "CURVE"}, out
    assert out.count("still here on n1") == 2 and out.count("still here on n2") == 2, out
