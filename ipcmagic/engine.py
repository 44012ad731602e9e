"""The engine program, ``python -m ipcmagic.engine``: ipyparallel's engine, whose nanny starts
together with it.

Every engine has a nanny process (it delivers signals such as ``%%px``'s interrupt and reports the
engine's death). ipyparallel starts it only once the engine has registered and waits while the
new interpreter imports ipyparallel; here the nanny starts first, imports while the engine does,
and gets its arguments when the engine has registered.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

#: started before the engine's own imports, so that both import at once
_nanny = subprocess.Popen(
    [sys.executable, "-m", "ipyparallel.engine.nanny"],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    env={**os.environ, "PYTHONUNBUFFERED": "1"},
    start_new_session=True,  # like ipyparallel's: signals to the engine's group pass it by
)

from ipyparallel.engine import app  # noqa: E402


def start_nanny(**kwargs: Any) -> tuple[str, subprocess.Popen]:
    """What :func:`ipyparallel.engine.nanny.start_nanny` does, with the nanny already running."""
    _nanny.stdin.write(pickle.dumps({**kwargs, "pid": os.getpid()}))
    _nanny.stdin.close()
    url = _nanny.stdout.readline().decode("utf8").strip()
    if not url:
        _nanny.terminate()
        raise RuntimeError("nanny failed")
    return url, _nanny


app.start_nanny = start_nanny  # what IPEngine.start_nanny calls, with the engine's arguments


class Engine(app.IPEngine):
    """ipyparallel's engine; configured as ``IPEngine``."""

    def init_engine(self) -> None:
        if not self.enable_nanny:
            _nanny.kill()
            _nanny.wait()
        super().init_engine()


if __name__ == "__main__":
    Engine.launch_instance()
