"""The controller program, ``python -m ipcmagic.controller``: ipyparallel's controller, without
the fixed quarter of a second it pauses before writing its connection files.

ipyparallel's controller sleeps 0.25 s right after setting up its task database, before the hub
exists; nothing it starts later relies on that pause, while the engines and the notebook wait for
the connection files it writes after it.
"""

from __future__ import annotations

import time
import types

from ipyparallel.controller import app

from .internals import fits

if fits("ipyparallel.controller.app.time", getattr(app, "time", None) is time, "the module holds no time"):
    app.time = types.SimpleNamespace(**{**vars(time), "sleep": lambda seconds: None})

if __name__ == "__main__":
    app.main()
