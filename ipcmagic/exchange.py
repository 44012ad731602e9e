"""The kernel's side of moving Python values to and from the ranks of one run: a TCP server that
only this run's ranks can talk to.

Each run gets a fresh random key, which reaches the ranks in their environment (readable by the
user alone); a connection must prove that it holds the key (an HMAC over both sides' nonces)
before anything is read from it, and the kernel proves it too. Every rank ``get``\\ s the same
bytes, the kernel's offer, and ``put``\\ s its own; values of any size travel in the connection,
never in an environment variable, a command line or a file, so nothing needs a shared file
system and nothing is left behind. The ranks' side is :mod:`ipcmagic.rank`.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import socket
import threading
from typing import Any

from .rank import EXCHANGE_VAR, KEY_VAR, proof, receive, send

#: seconds a connection may take for its handshake (a stranger must not hold a thread for long)
HANDSHAKE_TIMEOUT = 10.0


class Exchange:
    """One run's server: offers ``offer`` to every rank, keeps each rank's put in ``results``."""

    def __init__(self, offer: bytes, host: str) -> None:
        self.offer = offer
        self.key = secrets.token_bytes(32)
        self.results: dict[int, bytes | bytearray] = {}
        self.refused = 0  # connections that could not prove the key
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
                sock.settimeout(HANDSHAKE_TIMEOUT)
                nonce = os.urandom(32)
                send(sock, nonce)
                who, rank_nonce, rank_proof = receive(sock), receive(sock), receive(sock)
                if not hmac.compare_digest(rank_proof, proof(self.key, b"rank", nonce, rank_nonce, who)):
                    self.refused += 1
                    return
                send(sock, proof(self.key, b"kernel", rank_nonce, nonce))
                sock.settimeout(None)  # values of any size, at the pace of the network
                op, rank = who.split()
                if op == b"get":
                    send(sock, self.offer)
                elif op == b"put":
                    self.results[int(rank)] = receive(sock)
                    send(sock, b"ok")
            except (OSError, ValueError):
                self.refused += 1

    def close(self) -> None:
        """Stop listening, end the connections still open, wait for their threads."""
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
