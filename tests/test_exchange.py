"""The exchange of a %%torchrun run under attack by another user of the node (nobody): before a
connection proves the run's key it gets nothing, costs the kernel next to nothing, and cannot
keep the run's ranks out."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import psutil
import pytest

from ipcmagic.torchrun import exchange as exchange_module
from ipcmagic.torchrun import rank
from ipcmagic.torchrun.exchange import MAX_UNPROVEN, Exchange

LOOPBACK = "127.0.0.1"
#: nobody's attacks: ``big`` announces 1 GiB and trickles it, ``huge`` announces 2**64 - 1 bytes
#: (ValueError here, OverflowError in the cell before), ``trickle`` sends a small message a byte a
#: second, ``flood`` holds 1,200 idle connections; each prints how long the kernel kept it open
INTRUDER = """
import resource, socket, struct, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
def closed_after(sock, send):
    tic = time.monotonic()
    sock.settimeout(0.5)
    try:
        while time.monotonic() - tic < 30:
            send()
            try:
                if sock.recv(4096) == b"":
                    break
            except socket.timeout:
                pass
    except OSError:  # reset, or a broken pipe
        pass
    return time.monotonic() - tic
if mode == "flood":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(1200)]
    print("holding", flush=True)
    sys.stdin.read()
    sys.exit()
sock = socket.create_connection(("127.0.0.1", port))
header = {"big": struct.pack("!Q", 1 << 30), "huge": b"\\xff" * 8, "trickle": struct.pack("!Q", 100)}[mode]
sock.sendall(header)
print(f"{closed_after(sock, lambda: sock.send(b'x')):.1f}")
"""


def _nobody(mode: str, port: int, **options) -> subprocess.Popen:
    return subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", INTRUDER, mode, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        **options,
    )


def _port(exchange: Exchange) -> int:
    return int(exchange.env[rank.EXCHANGE_VAR].rsplit(":", 1)[1])


def _rank_connects(exchange: Exchange, number: int, monkeypatch) -> rank.Kernel:
    for name, value in exchange.env.items():
        monkeypatch.setenv(name, value)
    return rank.Kernel(number)


@pytest.fixture
def errors_in_threads(monkeypatch) -> list:
    """What an exception in one of the exchange's threads would have printed into the cell."""
    caught: list = []
    monkeypatch.setattr(threading, "excepthook", caught.append)
    return caught


@pytest.mark.parametrize("mode", ["big", "huge"])
def test_an_announcement_before_the_proof_is_closed_at_once(mode, errors_in_threads):
    """Two 1 GiB announcements trickled took the kernel from 99 MiB to 2.1 GiB; 2**64 - 1 bytes
    put an OverflowError traceback into the running cell."""
    kernel = psutil.Process()
    before = kernel.memory_info().rss
    with Exchange(b"the offer", LOOPBACK) as exchange:
        attacks = [_nobody(mode, _port(exchange)) for _ in range(2)]
        kept = [float(attack.communicate(timeout=60)[0]) for attack in attacks]
    assert max(kept) < 2, kept
    assert kernel.memory_info().rss - before < 20 << 20
    assert exchange.refused == 2 and errors_in_threads == []


def test_a_handshake_has_a_deadline_however_slowly_it_trickles(monkeypatch, errors_in_threads):
    monkeypatch.setattr(exchange_module, "HANDSHAKE_TIMEOUT", 2.0)
    with Exchange(b"the offer", LOOPBACK) as exchange:
        kept = float(_nobody("trickle", _port(exchange)).communicate(timeout=60)[0])
    assert 1.5 < kept < 4, kept
    assert exchange.refused == 1 and errors_in_threads == []


def test_idle_connections_cost_no_more_than_their_cap_and_keep_no_rank_out(monkeypatch, errors_in_threads):
    """About 1,100 idle connections exhausted the kernel's file descriptors and its accept thread
    died for good; a rank arriving later waited forever."""
    kernel = psutil.Process()
    with Exchange(b"the offer", LOOPBACK) as exchange:
        fds = kernel.num_fds()
        flood = _nobody("flood", _port(exchange), stdin=subprocess.PIPE)
        try:
            assert flood.stdout.readline() == "holding\n"
            time.sleep(1)  # the kernel accepts what it can
            assert kernel.num_fds() - fds <= MAX_UNPROVEN + 8
            tic = time.monotonic()
            ranks = [_rank_connects(exchange, number, monkeypatch) for number in range(2)]
            assert time.monotonic() - tic < 5
            assert [r.offer for r in ranks] == [b"the offer"] * 2 and sorted(exchange.nodes) == [0, 1]
        finally:
            flood.communicate(timeout=60)
        for r in ranks:
            r.ended(0)
            r.sock.close()
    assert exchange.exits == {0: 0, 1: 0} and errors_in_threads == []


def test_a_rank_gives_up_on_a_kernel_that_never_answers(monkeypatch):
    """A rank waited forever for a kernel that accepted its connection and said nothing."""
    monkeypatch.setattr(rank, "CONNECT_TIMEOUT", 1.0)
    with socket.create_server((LOOPBACK, 0)) as silent:
        monkeypatch.setenv(rank.EXCHANGE_VAR, f"{LOOPBACK}:{silent.getsockname()[1]}")
        monkeypatch.setenv(rank.KEY_VAR, os.urandom(32).hex())
        tic = time.monotonic()
        with pytest.raises(SystemExit, match="rank 0 cannot reach the notebook's kernel .*timed out"):
            rank.connect()
        assert time.monotonic() - tic < 3
