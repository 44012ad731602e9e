"""The controller program, ``python -m ipcmagic.controller``: ipyparallel's controller, without
the fixed quarter of a second it pauses before writing its connection files, and ending at once
on a stop.

ipyparallel's controller sleeps 0.25 s right after setting up its task database, before the hub
exists; nothing it starts later relies on that pause, while the engines and the notebook wait for
the connection files it writes after it. On SIGTERM (a stop) it stops its loop, closes every
socket and tears the interpreter down; its state is in memory and goes with it, so here it ends
its children and removes its connection files as ipyparallel does, and exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import types
from typing import Any

from ipyparallel.controller import app

from .base.internals import fits, parameters

if fits("ipyparallel.controller.app.time", getattr(app, "time", None) is time, "the module holds no time"):
    app.time = types.SimpleNamespace(**{**vars(time), "sleep": lambda seconds: None})


_stock_handle_signal = getattr(app.IPController, "handle_signal", None)


def quick_exit_fits() -> bool:
    """Whether the controller handles signals with ``handle_signal(self, sig, frame)`` and has the
    clean-ups that the quick exit calls."""
    controller = app.IPController
    return fits(
        "IPController.handle_signal",
        parameters(getattr(controller, "handle_signal", None)) == ["self", "sig", "frame"]
        and callable(getattr(controller, "terminate_children", None))
        and callable(getattr(controller, "cleanup_connection_files", None)),
        "signals are handled differently than ipcmagic expects",
    )


def handle_signal(self: Any, sig: int, frame: Any) -> None:
    """SIGTERM: end the children, remove the connection files, exit; other signals as ipyparallel."""
    if sig != signal.SIGTERM:
        return _stock_handle_signal(self, sig, frame)
    self.terminate_children()
    self.cleanup_connection_files()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if quick_exit_fits():
        app.IPController.handle_signal = handle_signal
    app.main()
