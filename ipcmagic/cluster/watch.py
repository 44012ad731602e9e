"""``%pxwatch NAME``: follow parallel work started without blocking (``%%px --noblock -o NAME``,
or any ipyparallel ``AsyncResult``) until it completes."""

from __future__ import annotations

from typing import Any


def watch(result: Any) -> Any:
    """Show ``result``'s output per engine as it arrives (what already arrived first), wait for it
    without polling, and return its value; failed engines raise as in ``%%px``. Interrupting stops
    the watching, not the work."""
    from ipyparallel.client.client import ExecuteReply

    with result.stream_output():
        result.wait()
    value = result.get()
    if isinstance(value, list) and all(isinstance(item, ExecuteReply) for item in value):
        return None  # a cell's results were streamed with its output
    return value
