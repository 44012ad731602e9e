"""The engine program, ``python -m ipcmagic.engine``: ipyparallel's engine, whose nanny is forked
from it.

Every engine has a nanny process (it delivers signals such as ``%%px``'s interrupt and reports the
engine's death). ipyparallel starts it only once the engine has registered, as a new interpreter
that imports ipyparallel all over again while the engine waits. Here the engine forks the nanny as
soon as ipyparallel is imported, before any thread or socket exists: the nanny shares the imported
modules, costs next to no CPU time, and gets its arguments when the engine has registered.

The engine's kernel also skips ipykernel's debugger: it would import debugpy (a fifth of an
engine's CPU time to start) for a debug channel that ipyparallel's engines do not have. And a stop
(SIGTERM) ends the engine as a script ends, without ipyparallel's graceful kernel shutdown; so
does ``exit()`` in a cell, which in ipyparallel leaves an engine that beats but runs nothing.

An engine that will be a dask worker gets a new private directory for dask's files on its node
(``private_scratch``), removed when the engine ends.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from typing import IO, Any, NoReturn

from ipyparallel.engine import app, nanny
from traitlets import Bool

from .base.containers import reactivate
from .base.internals import fits, parameters


def import_kernel_without_debugger() -> None:
    """Import ipykernel's debugger module as if debugpy were missing; user code can still import it."""
    reach = "ipykernel.debugger without debugpy"
    if not fits(reach, "ipykernel.debugger" not in sys.modules, "ipyparallel imported it first"):
        return  # ipykernel 6.9, through ipyparallel's engine app
    sys.modules["debugpy"] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        import ipykernel.debugger  # noqa: F401
    except ImportError as e:  # it needs debugpy now: ipykernel imports it as it ships
        fits(reach, False, f"it does not import ({e})")
    finally:
        del sys.modules["debugpy"]


def nanny_fits() -> bool:
    """Whether ipyparallel starts the nanny as :class:`ForkedNanny` expects: ``start_nanny(**kwargs)``
    from the engine's app, and ``nanny.main()`` reading those from stdin."""
    return fits(
        "ipyparallel.engine.nanny",
        parameters(nanny.start_nanny) == ["kwargs"]
        and parameters(nanny.main) == []
        and getattr(app, "start_nanny", None) is nanny.start_nanny,
        "the nanny is started differently than ipcmagic forks it",
    )


class ForkedNanny:
    """A nanny forked at once, that waits for its arguments to run ipyparallel's nanny."""

    def __init__(self) -> None:
        args_read, args_write = os.pipe()
        answer_read, answer_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # stdin and stdout are the nanny's pipes, as for ipyparallel's own
            os.dup2(args_read, 0)
            os.dup2(answer_write, 1)
            for fd in (args_read, args_write, answer_read, answer_write):
                os.close(fd)
            self.run()
        os.close(args_read)
        os.close(answer_write)
        self.args = open(args_write, "wb")  # noqa: SIM115
        #: held open for the engine's life: its closing tells the nanny that the engine is gone
        self.answer = open(answer_read, "rb")  # noqa: SIM115

    @staticmethod
    def run() -> NoReturn:
        """The nanny's life: ipyparallel's nanny, then exit without the engine's exit handlers."""
        os.setsid()  # signals to the engine's process group pass it by
        sys.stdout = open(1, "w", buffering=1)  # noqa: SIM115 (the answer, line by line)
        status = 0
        try:
            nanny.main()
        except EOFError:  # the engine ended before registering, or runs without a nanny
            pass
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            os._exit(status)

    def start(self, **kwargs: Any) -> tuple[str, IO[bytes]]:
        """What :func:`ipyparallel.engine.nanny.start_nanny` does, with the nanny already forked."""
        with self.args:
            self.args.write(pickle.dumps({**kwargs, "pid": os.getpid()}))
        url = self.answer.readline().decode("utf8").strip()
        if not url:
            raise RuntimeError("nanny failed")
        return url, self.answer

    def cancel(self) -> None:
        """End the nanny before it starts."""
        self.args.close()
        os.waitpid(self.pid, 0)


def quick_stop_fits() -> bool:
    """Whether ipyparallel stops an engine on SIGTERM with ``IPEngine._signal_stop(sig, frame)``."""
    return fits(
        "IPEngine._signal_stop",
        parameters(getattr(app.IPEngine, "_signal_stop", None)) == ["self", "sig", "frame"],
        "SIGTERM is handled differently than ipcmagic expects",
    )


class Engine(app.IPEngine):
    """ipyparallel's engine; configured as ``IPEngine``."""

    forked_nanny: ForkedNanny | None = None
    private_scratch = Bool(
        False,
        config=True,
        help="Give dask a new private directory on this node for its files (DASK_TEMPORARY_DIRECTORY), "
        "removed when the engine ends. dask's default, /tmp/dask-scratch-space, is shared by every "
        "user of the node, and dask puts its directory on sys.path.",
    )

    def init_engine(self) -> None:
        if self.forked_nanny and not self.enable_nanny:
            self.forked_nanny.cancel()
        if self.private_scratch:
            make_scratch()
        super().init_engine()

    def init_signal(self) -> None:
        """Also: ``exit()`` in a cell ends the engine, which is then lost like any other. ipykernel
        only stops the engine's loop (``shell.exit_now``), and the heartbeat thread keeps an engine
        that runs nothing beating (ipcmagic's next ``%px`` waited for it forever)."""
        super().init_signal()
        shell = getattr(getattr(self, "kernel", None), "shell", None)
        if fits("IPEngine.kernel.shell", shell is not None and shell.has_trait("exit_now"), "no shell yet"):
            shell.observe(lambda change: change["new"] and exit_soon(), "exit_now")

    def quick_stop(self, sig: int, frame: Any) -> None:
        """SIGTERM (a stop): end as a script would end (exit handlers run, output flushed), then
        by the signal itself, without the graceful kernel shutdown and interpreter teardown that
        ipyparallel does here: N engines stopping at once would share the node's cores for it.
        The forked nanny goes first: on a stop it has nothing to tell the controller. The exit
        handlers run over a frozen heap: IPython's (a namespace reset) collects garbage across
        every object of the engine, 14 ms of CPU each, which 256 engines would share 2 cores for;
        the user's objects are still freed with the namespace, only cycles wait for the exit."""
        signal.signal(sig, signal.SIG_IGN)  # a stop may send it twice: here, and through Slurm
        if self.forked_nanny:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.forked_nanny.pid, signal.SIGKILL)
        run_exit_handlers()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)


#: the engine's private directory for dask, if it has one
scratch: list[str] = []


def make_scratch() -> None:
    """A new private directory (0700, random name) for dask's files, removed at the engine's end."""
    scratch.append(tempfile.mkdtemp(prefix="ipcmagic-dask-"))
    os.environ["DASK_TEMPORARY_DIRECTORY"] = scratch[0]  # dask reads it when it is imported
    atexit.register(remove_scratch)


def remove_scratch() -> None:
    for directory in scratch:
        shutil.rmtree(directory, ignore_errors=True)


def exit_soon(delay: float = 0.5) -> None:
    """End the engine once the cell's reply went out: with code 0, output flushed, without the exit
    handlers (mpi4py's MPI_Finalize would wait for the other ranks)."""

    def end() -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        remove_scratch()
        os._exit(0)

    threading.Timer(delay, end).start()


def run_exit_handlers() -> None:
    """What a script does at its end: the exit handlers (over a frozen heap), output flushed."""
    gc.freeze()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    reactivate(os.environ)  # the kernel's venv, where the engine's container set its own PATH
    import_kernel_without_debugger()
    if nanny_fits():
        Engine.forked_nanny = ForkedNanny()
        app.start_nanny = Engine.forked_nanny.start  # what IPEngine.start_nanny calls
    if quick_stop_fits():
        Engine._signal_stop = Engine.quick_stop  # what IPEngine.start installs for SIGTERM
    Engine.launch_instance()
