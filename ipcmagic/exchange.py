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
:mod:`ipcmagic.rank`.
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

from .rank import EXCHANGE_VAR, KEY_VAR, proof, receive, send

#: seconds a connection may take for its handshake (a stranger must not hold a thread for long)
HANDSHAKE_TIMEOUT = 10.0
#: TCP keepalive of the ranks' connections: idle seconds, seconds between probes, probes
KEEPALIVE = (5, 2, 3)
#: seconds until a connection to a node that went silent (powered off, cut off) fails
SILENT_NODE = KEEPALIVE[0] + KEEPALIVE[1] * KEEPALIVE[2]


class Exchange:
    """One run's server: offers ``offer`` to every rank, keeps each rank's put in ``results``, its
    node in ``nodes``, its announced exit status in ``exits``, and when its connection closed
    without one in ``vanished``."""

    def __init__(self, offer: bytes, host: str) -> None:
        self.offer = offer
        self.key = secrets.token_bytes(32)
        self.results: dict[int, bytes | bytearray] = {}
        self.nodes: dict[int, str] = {}
        self.exits: dict[int, int] = {}
        self.vanished: dict[int, float] = {}  # rank -> time.monotonic() when its connection closed
        self.refused = 0  # connections that could not prove the key
        self._closing = False
        self._server = socket.create_server((host, 0))
        self._connections: list[tuple[socket.socket, threading.Thread]] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True, name="ipcmagic-exchange")
        self._accepting.start()

    @property
    def env(self) -> dict[str, str]:
        """What the ranks need to reach this exchange."""
        host, port = self._server.getsockname()[:2]
        return {EXCHANGE_VAR: f"{host}:{port}", KEY_VAR: self.key.hex()}

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:  # shut down by close()
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._connections.append((sock, thread))
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                rank = self._admit(sock)
            except (OSError, ValueError):
                rank = None
            if rank is None:
                self.refused += 1
                return
            try:
                while (what := receive(sock)) == b"put":
                    self.results[rank] = receive(sock)
                    send(sock, b"ok")
                if what == b"exit":
                    self.exits[rank] = int(receive(sock))
                    return
            except (OSError, ValueError):
                pass
            if not self._closing:
                self.vanished[rank] = time.monotonic()

    def _admit(self, sock: socket.socket) -> int | None:
        """The rank of a connection that proves it holds the key, after the kernel's proof and
        the offer went to it; None for one that does not."""
        sock.settimeout(HANDSHAKE_TIMEOUT)
        nonce = os.urandom(32)
        send(sock, nonce)
        who, rank_nonce, rank_proof = receive(sock), receive(sock), receive(sock)
        if not hmac.compare_digest(rank_proof, proof(self.key, b"rank", nonce, rank_nonce, who)):
            return None
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
        return {rank: self.nodes[rank] for rank, when in list(self.vanished.items()) if now - when >= after}

    def close(self) -> None:
        """Stop listening, end the connections still open, wait for their threads."""
        self._closing = True
        self._server.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would not
        self._server.close()
        self._accepting.join()
        for sock, thread in self._connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            thread.join()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
