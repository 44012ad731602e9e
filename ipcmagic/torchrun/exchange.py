"""The kernel's side of one run's ranks: a TCP server that only this run's ranks can talk to,
which moves Python values to and from them and knows which rank is where and how it ended.

Each run gets a fresh random key, which reaches the ranks in their environment (readable by the
user alone); a connection must prove that it holds the key (an HMAC over both sides' nonces)
before anything is read from it, and the kernel proves it too. Each rank then holds its
connection for its life: it gets the kernel's offer (the same bytes for every rank), may ``put``
its own result, and says its exit status last. Values of any size travel in the connection,
never in an environment variable, a command line or a file, so nothing needs a shared file
system and nothing is left behind. A connection that closes without an exit status is a rank
that died (TCP keepalive notices a node that went silent within :data:`SILENT_NODE` s); when
the launcher does not report that death, the rank's node is lost. The ranks' side is
:mod:`ipcmagic.torchrun.rank`.

Before its proof a connection can cost the kernel little: it gets no more than
:data:`HANDSHAKE_TIMEOUT` s in all, messages of :data:`UNPROVEN_BYTES` at most, and no more than
:data:`MAX_UNPROVEN` wait for their proof at once (a new one ends the oldest: a rank's proof takes
a round trip, a stranger's idle connections are what gets ended).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import socket
import threading
import time
from typing import Any

from .rank import EXCHANGE_VAR, KEY_VAR, LENGTH, proof, receive, send

#: seconds a connection may take for its whole handshake (a stranger must not hold a thread long)
HANDSHAKE_TIMEOUT = 10.0
#: the largest message read before the proof (a rank's number and node name, a nonce, a proof)
UNPROVEN_BYTES = 1024
#: connections waiting for their proof at once; one more ends the oldest
MAX_UNPROVEN = 128
#: TCP keepalive of the ranks' connections: idle seconds, seconds between probes, probes
KEEPALIVE = (5, 2, 3)
#: seconds until a connection to a node that went silent (powered off, cut off) fails
SILENT_NODE = KEEPALIVE[0] + KEEPALIVE[1] * KEEPALIVE[2]


class Exchange:
    """One run's server: offers ``offer`` to every rank, keeps each rank's put in ``results``, its
    node in ``nodes``, its announced exit status in ``exits`` and peak memory in ``peaks``, and when
    it ended (said its exit status, or its connection closed without one) in ``ended``."""

    def __init__(self, offer: bytes, host: str) -> None:
        self.offer = offer
        self.key = secrets.token_bytes(32)
        self.results: dict[int, bytes | bytearray] = {}
        self.nodes: dict[int, str] = {}
        self.exits: dict[int, int] = {}
        self.ended: dict[int, float] = {}  # rank -> time.monotonic() when it ended
        self.peaks: dict[int, tuple[int, int]] = {}  # rank -> peak RSS, GPU memory (-1: none)
        self.refused = 0  # connections that could not prove the key
        self._closing = False
        self._server = socket.create_server((host, 0))
        self._unproven: dict[socket.socket, None] = {}  # oldest first
        self._lock = threading.Lock()
        self._connections: list[tuple[socket.socket, threading.Thread]] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True, name="ipcmagic-exchange")
        self._accepting.start()

    @property
    def env(self) -> dict[str, str]:
        """What the ranks need to reach this exchange."""
        host, port = self._server.getsockname()[:2]
        return {EXCHANGE_VAR: f"{host}:{port}", KEY_VAR: self.key.hex()}

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self._server.accept()
            except OSError:  # shut down by close(), or out of file descriptors for a moment
                if not self._closing:
                    time.sleep(0.05)
                continue
            with self._lock:
                if len(self._unproven) >= MAX_UNPROVEN:
                    oldest = next(iter(self._unproven))
                    del self._unproven[oldest]
                    _end(oldest)
                self._unproven[sock] = None
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                rank = self._admit(sock)
            except (OSError, ValueError):
                rank = None
            if rank is None:
                with self._lock:
                    self._unproven.pop(sock, None)
                self.refused += 1
                return
            try:
                while (what := receive(sock)) == b"put":
                    self.results[rank] = receive(sock)
                    send(sock, b"ok")
                if what == b"exit":
                    status, (rss, gpu) = int(receive(sock)), receive(sock).split()
                    self.peaks[rank] = (int(rss), int(gpu))
                    self.exits[rank] = status
                    self.ended[rank] = time.monotonic()
                    return
            except (OSError, ValueError):
                pass
            if not self._closing:
                self.ended[rank] = time.monotonic()

    def _admit(self, sock: socket.socket) -> int | None:
        """The rank of a connection that proves it holds the key, after the kernel's proof and
        the offer went to it; None for one that does not."""
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        sock.settimeout(HANDSHAKE_TIMEOUT)
        nonce = os.urandom(32)
        send(sock, nonce)
        who, rank_nonce, rank_proof = (_unproven_message(sock, deadline) for _ in range(3))
        if not hmac.compare_digest(rank_proof, proof(self.key, b"rank", nonce, rank_nonce, who)):
            return None
        with self._lock:  # proven: a rank's connection from now on, unless ended meanwhile
            if sock not in self._unproven or self._closing:
                return None
            del self._unproven[sock]
            self._connections.append((sock, threading.current_thread()))
        send(sock, proof(self.key, b"kernel", rank_nonce, nonce))
        rank, node = who.decode().split()
        self.nodes[int(rank)] = node
        sock.settimeout(None)  # values of any size, at the pace of the network
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        send(sock, self.offer)
        return int(rank)

    def unheard(self, after: float) -> dict[int, str]:
        """Ranks whose connection closed without an exit status at least ``after`` seconds ago:
        rank -> node."""
        now = time.monotonic()
        silent = [(rank, when) for rank, when in list(self.ended.items()) if rank not in self.exits]
        return {rank: self.nodes[rank] for rank, when in silent if now - when >= after}

    def peaks_of(self, ranks: int, wait: float = 0.2) -> list[tuple[int, int] | None]:
        """Each rank's peak memory (RSS, GPU; None: it did not say), waiting up to ``wait`` s for
        what the ranks sent as they ended to be read."""
        deadline = time.monotonic() + wait
        while len(self.peaks) < ranks and time.monotonic() < deadline:
            time.sleep(0.01)
        return [self.peaks.get(rank) for rank in range(ranks)]

    def close(self) -> None:
        """Stop listening, end the connections still open, wait for the ranks' threads."""
        self._closing = True
        self._server.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would not
        self._server.close()
        self._accepting.join()
        with self._lock:
            for sock in self._unproven:
                _end(sock)
            connections = list(self._connections)
        for sock, thread in connections:
            _end(sock)
            thread.join()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _end(sock: socket.socket) -> None:
    """End a connection from any thread: its reads return at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _unproven_message(sock: socket.socket, deadline: float) -> bytes:
    """One message of a connection that has not proven the key yet: small, and before ``deadline``."""
    (size,) = LENGTH.unpack(_before(sock, LENGTH.size, deadline))
    if size > UNPROVEN_BYTES:
        raise ValueError(f"{size} bytes announced before the proof")
    return _before(sock, size, deadline)


def _before(sock: socket.socket, size: int, deadline: float) -> bytes:
    """``size`` bytes from ``sock``, all of them before ``deadline`` (TimeoutError otherwise)."""
    data = b""
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        data += chunk
    return data
