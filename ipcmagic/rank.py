"""What runs on every rank of a ``%%torchrun`` run or a :func:`ipcmagic.torchrun.launch`: the
cell, or the launched function, with the notebook's values in and the results out.

The ranks run this file's source as ``python -c`` (their Python may be a container's, without
ipcmagic), so it uses the standard library only, and pickle (cloudpickle's pickles need
cloudpickle there). With ``$IPCMAGIC_EXCHANGE`` it talks to the kernel's
:class:`ipcmagic.exchange.Exchange`: a TCP connection on which both sides first prove that they
hold the run's key (``$IPCMAGIC_EXCHANGE_KEY``), then one value goes each way.

A rank leaves as Python would (threads joined, exit handlers run, the same exit code), but without
the C++ destructors that follow: in torch 2.x they may abort a rank whose work is done ("terminate
called without an active exception", SIGABRT; measured: 2 of 16 runs of the DDP example, 0 of 16
this way).
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import linecache
import os
import pickle
import socket
import struct
import sys
import threading
import traceback
from typing import Any

#: the variable that carries a cell's code to every rank, on every node: no file has to reach them
CELL_VAR = "IPCMAGIC_TORCHRUN_CELL"
#: where the kernel's exchange listens (host:port), and its key (hex)
EXCHANGE_VAR = "IPCMAGIC_EXCHANGE"
KEY_VAR = "IPCMAGIC_EXCHANGE_KEY"
#: the file name tracebacks show for the cell's lines
CELL_NAME = "<%%torchrun cell>"
_LENGTH = struct.Struct("!Q")


def send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(data)))
    sock.sendall(data)


def receive(sock: socket.socket) -> bytearray:
    (size,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    return _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes, received into one buffer (a gigabyte is not copied again)."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, 1 << 24))
        if not n:
            raise ConnectionError("the other side closed the connection")
        got += n
    return data


def proof(key: bytes, *parts: bytes) -> bytes:
    """What proves, for this handshake's nonces, that its sender holds ``key``."""
    return hmac.new(key, b"\0".join(parts), hashlib.sha256).digest()


def exchange(op: bytes, rank: int, data: bytes = b"") -> bytearray:
    """``get`` what the kernel offers every rank, or ``put`` this rank's result; both sides prove
    that they hold the run's key before anything else is read."""
    host, port = os.environ[EXCHANGE_VAR].rsplit(":", 1)
    key = bytes.fromhex(os.environ[KEY_VAR])
    with socket.create_connection((host, int(port))) as sock:
        server_nonce, nonce = receive(sock), os.urandom(32)
        who = b"%s %d" % (op, rank)
        send(sock, who)
        send(sock, nonce)
        send(sock, proof(key, b"rank", server_nonce, nonce, who))
        if not hmac.compare_digest(receive(sock), proof(key, b"kernel", nonce, server_nonce)):
            raise ConnectionError("the exchange did not prove that it is this run's kernel")
        if op == b"put":
            send(sock, data)
        return receive(sock)


def run_cell(code: str) -> int:
    """Run the cell as ``__main__`` with the pushed values; put the pulled ones; the exit status."""
    linecache.cache[CELL_NAME] = (len(code), None, code.splitlines(True), CELL_NAME)
    rank = int(os.environ.get("RANK", "0"))
    offered = pickle.loads(exchange(b"get", rank)) if EXCHANGE_VAR in os.environ else {}
    namespace = {"__name__": "__main__", "__builtins__": __builtins__, **offered.get("push", {})}
    status = _status(lambda: exec(compile(code, CELL_NAME, "exec"), namespace))
    if status == 0 and offered.get("pull"):
        missing = [name for name in offered["pull"] if name not in namespace]
        values = {name: namespace[name] for name in offered["pull"] if name in namespace}
        exchange(b"put", rank, _pickled(("missing", missing) if missing else ("ok", values)))
    return status


def run_function() -> int:
    """Call the launched function with its arguments; put its value, or its exception as text."""
    rank = int(os.environ.get("RANK", "0"))
    fn, args, kwargs, source = pickle.loads(exchange(b"get", rank))
    if source:  # a function of the notebook: its tracebacks show the cell's lines
        filename, lines = source
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        fn.__code__ = fn.__code__.replace(co_filename=filename)
    try:
        outcome = ("ok", fn(*args, **kwargs))
    except BaseException as error:  # a SystemExit or KeyboardInterrupt in fn is its failure too
        lines = traceback.format_exception(type(error), error, error.__traceback__.tb_next)
        outcome = ("raised", f"{type(error).__name__}: {error}", "".join(lines))
    exchange(b"put", rank, _pickled(outcome))
    return 0 if outcome[0] == "ok" else 1


def _pickled(outcome: tuple) -> bytes:
    """The outcome as bytes; a value that cannot be pickled becomes that failure."""
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        return pickle.dumps(("unpicklable", f"{type(error).__name__}: {error}"))


def _status(run: Any) -> int:
    """Run ``run()`` as a script would run: its exit status, a traceback without this frame."""
    try:
        run()
    except SystemExit as stop:
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException as error:
        traceback.print_exception(type(error), error, error.__traceback__.tb_next.tb_next)
        return 1
    return 0


def main() -> None:
    code = os.environ.pop(CELL_VAR, None)
    sys.argv[0] = CELL_NAME if code is not None else "<ipcmagic launch>"
    status = run_cell(code) if code is not None else _status(lambda: sys.exit(run_function()))
    getattr(threading, "_shutdown", lambda: None)()
    getattr(atexit, "_run_exitfuncs", lambda: None)()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
