"""What runs on every rank of a ``%%torchrun`` run or a :func:`ipcmagic.torchrun.launch`: the
cell, the script file, or the launched function, with the notebook's values in and the results out.

The ranks run this file's source as ``python -c`` (their Python may be a container's, without
ipcmagic), so it uses the standard library only, and pickle (cloudpickle's pickles need
cloudpickle there). With ``$IPCMAGIC_EXCHANGE`` it talks to the kernel's
:class:`ipcmagic.torchrun.exchange.Exchange` over one TCP connection for the rank's life (:class:`Kernel`):
both sides first prove that they hold the run's key (``$IPCMAGIC_EXCHANGE_KEY``), then one value
goes each way, and the rank's exit status last.

A rank leaves as Python would (threads joined, exit handlers run, the same exit code), but without
the C++ destructors that follow: in torch 2.x they may abort a rank whose work is done ("terminate
called without an active exception", SIGABRT; measured: 2 of 16 runs of the DDP example, 0 of 16
this way).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import linecache
import os
import pickle
import resource
import socket
import struct
import sys
import threading
import traceback
import types
from typing import Any

#: the variable that carries a cell's code to every rank, on every node: no file has to reach them
CELL_VAR = "IPCMAGIC_TORCHRUN_CELL"
#: where the kernel's exchange listens (host:port), and its key (hex)
EXCHANGE_VAR = "IPCMAGIC_EXCHANGE"
KEY_VAR = "IPCMAGIC_EXCHANGE_KEY"
#: where a rank of a run without an exchange leaves its peak memory (the run's private directory)
PEAKS_VAR = "IPCMAGIC_PEAKS"
#: seconds a rank waits to reach the kernel and for its proof (a kernel under attack, or gone)
CONNECT_TIMEOUT = 60.0
#: the file name tracebacks show for the cell's lines
CELL_NAME = "<%%torchrun cell>"
#: the frame of every message: its length
LENGTH = struct.Struct("!Q")


def send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(LENGTH.pack(len(data)))
    sock.sendall(data)


def receive(sock: socket.socket) -> bytearray:
    (size,) = LENGTH.unpack(_exactly(sock, LENGTH.size))
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


class Kernel:
    """This rank's connection to the kernel's exchange, held for the rank's life: both sides first
    prove that they hold the run's key; then the kernel's offer comes in, this rank's result may go
    out, and its exit status and peak memory go out last. Its closing without an exit status tells the kernel
    that the rank died; when srun does not report that, its node is lost."""

    def __init__(self, rank: int) -> None:
        host, port = os.environ[EXCHANGE_VAR].rsplit(":", 1)
        key = bytes.fromhex(os.environ[KEY_VAR])
        self.sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
        server_nonce, nonce = receive(self.sock), os.urandom(32)
        who = b"%d %s" % (rank, os.environ.get("SLURMD_NODENAME", socket.gethostname()).encode())
        send(self.sock, who)
        send(self.sock, nonce)
        send(self.sock, proof(key, b"rank", server_nonce, nonce, who))
        if not hmac.compare_digest(receive(self.sock), proof(key, b"kernel", nonce, server_nonce)):
            raise ConnectionError("the exchange did not prove that it is this run's kernel")
        self.sock.settimeout(None)  # the offer and results: any size, at the pace of the network
        self.offer = receive(self.sock)
        self.pid: int | None = os.getpid()

    def put(self, data: bytes) -> None:
        """Send this rank's result; return once the kernel has it."""
        send(self.sock, b"put")
        send(self.sock, data)
        receive(self.sock)

    def ended(self, status: int) -> None:
        """Tell the kernel this rank's exit status and peak memory (from the rank's process only,
        not a fork)."""
        if os.getpid() == self.pid:
            self.pid = None
            with contextlib.suppress(OSError):
                send(self.sock, b"exit")
                send(self.sock, b"%d" % status)
                send(self.sock, b"%d %d" % peak_memory())


def peak_memory() -> tuple[int, int]:
    """This process's peak resident memory, and the most GPU memory torch's allocator held on one
    device (-1: torch did not use CUDA), in bytes."""
    gpu = -1
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):  # torch half-imported, or CUDA in a bad state at the end
        if torch is not None and torch.cuda.is_initialized():
            gpu = max(torch.cuda.max_memory_reserved(d) for d in range(torch.cuda.device_count()))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, gpu


def connect() -> Kernel | None:
    """The rank's connection to the kernel, when the run has an exchange; from then on
    ``os._exit`` (also where the rank's code calls it) first tells the kernel the exit status."""
    if EXCHANGE_VAR not in os.environ:
        return None
    rank = int(os.environ.get("RANK", "0"))
    try:
        kernel = Kernel(rank)
    except OSError as error:  # ConnectionError too
        reach = f"rank {rank} cannot reach the notebook's kernel at {os.environ[EXCHANGE_VAR]}"
        raise SystemExit(f"ipcmagic: {reach}: {error}") from None
    _exit = os._exit

    def announced_exit(status: int) -> None:
        kernel.ended(status)
        _exit(status)

    os._exit = announced_exit
    return kernel


def run_script(source: str | bytes, filename: str, kernel: Kernel | None) -> int:
    """Run a cell or a script file as ``__main__``, a cell with the pushed values; put the pulled
    ones; the exit status."""
    offered = pickle.loads(kernel.offer) if kernel and kernel.offer else {}
    main = types.ModuleType("__main__")  # in sys.modules: pickle finds what the code defines
    main.__dict__.update(offered.get("push", {}), __builtins__=__builtins__)
    if filename != CELL_NAME:
        main.__file__ = filename
    sys.modules["__main__"] = main
    status = _status(lambda: exec(compile(source, filename, "exec"), main.__dict__))
    if status == 0 and offered.get("pull"):
        missing = [name for name in offered["pull"] if name not in main.__dict__]
        values = {name: main.__dict__[name] for name in offered["pull"] if name in main.__dict__}
        kernel.put(_pickled(("missing", missing) if missing else ("ok", values)))
    return status


def run_file(path: str, kernel: Kernel | None) -> int:
    """Run a script file as ``python path`` would (its bytes: compile reads its coding line)."""
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as error:
        print(f"python: can't open file {path!r}: [Errno {error.errno}] {error.strerror}", file=sys.stderr)
        return 2
    return run_script(source, path, kernel)


def run_function(kernel: Kernel) -> int:
    """Call the launched function with its arguments; put its value, or its exception as text."""
    fn, args, kwargs, source = pickle.loads(kernel.offer)
    if source:  # a function of the notebook: its tracebacks show the cell's lines
        filename, lines = source
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        fn.__code__ = fn.__code__.replace(co_filename=filename)
    try:
        outcome = ("ok", fn(*args, **kwargs))
    except BaseException as error:  # a SystemExit or KeyboardInterrupt in fn is its failure too
        lines = traceback.format_exception(type(error), error, error.__traceback__.tb_next)
        outcome = ("raised", f"{type(error).__name__}: {error}", "".join(lines))
    kernel.put(_pickled(outcome))
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
    """``python -c <this file> [arguments]``: with ``$IPCMAGIC_TORCHRUN_CELL`` the cell, the
    arguments its ``sys.argv[1:]``; else with arguments the script file they start with; else
    the launched function."""
    kept_prefix = "IPCMAGIC_KERNEL_"  # ipcmagic.base.containers.reactivate, without ipcmagic
    for kept in [name for name in os.environ if name.startswith(kept_prefix)]:
        os.environ[kept[len(kept_prefix) :]] = os.environ.pop(kept)
    kernel = connect()
    code = os.environb.pop(CELL_VAR.encode(), None)
    if code is not None:
        code = code.decode()  # UTF-8, whatever the locale
        sys.argv[0] = CELL_NAME
        linecache.cache[CELL_NAME] = (len(code), None, code.splitlines(True), CELL_NAME)
        status = run_script(code, CELL_NAME, kernel)
    elif len(sys.argv) > 1:
        del sys.argv[0]
        status = run_file(sys.argv[0], kernel)
    else:
        sys.argv[0] = "<ipcmagic launch>"
        status = _status(lambda: sys.exit(run_function(kernel)))
    getattr(threading, "_shutdown", lambda: None)()
    getattr(atexit, "_run_exitfuncs", lambda: None)()
    sys.stdout.flush()
    sys.stderr.flush()
    if kernel is None and os.environ.get(PEAKS_VAR):  # the exchange hears it from os._exit
        with contextlib.suppress(OSError):
            path = os.path.join(os.environ[PEAKS_VAR], f"peak-{os.environ.get('RANK', '0')}")
            with open(path, "w") as f:
                f.write("{} {}".format(*peak_memory()))
    os._exit(status)


if __name__ == "__main__":
    main()
