"""The errors every part raises where a start fails or the user interrupts: one line each in IPython."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster could not be started or reached; the message says why and what to do."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through ipcmagic's internals
        return [f"{type(self).__name__}: {self}"]


class Interrupted(KeyboardInterrupt):
    """The user interrupted the kernel; the message says what was stopped."""

    def _render_traceback_(self) -> list[str]:
        # one line, as Python's own KeyboardInterrupt reads: the frames were ipcmagic's waiting
        return [f"KeyboardInterrupt: {self}"]
