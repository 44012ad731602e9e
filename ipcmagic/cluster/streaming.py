"""``%%px`` output streamed to the notebook once, not resent on every update, and bounded.

In a kernel, ipyparallel streams each engine's stdout and stderr as one display that it updates
with the whole text so far on every message: a cell that prints 50 MB delivered 440-560 MB to the
notebook, its largest message 12.5 MB (issue 37). Here each engine's stream grows a display only
up to :data:`SEGMENT` characters; later text starts a new display, headed by the engine's
``[stdout:N]`` as ipyparallel heads its own, so each character is sent about once. Past the view's
``output_limit`` characters of an engine's stream, the rest is not shown, and one line says so
(the result keeps all of it, as ipyparallel's does).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ipyparallel.client.asyncresult import AsyncResult
from IPython.core.getipython import get_ipython
from IPython.display import publish_display_data

#: characters a display of one engine's stream grows to before the next text starts another
SEGMENT = 16 * 1024


@dataclass
class Segment:
    """The display of an engine's stream that grows now, and what it shows."""

    display_id: str
    text: str


class StreamedOnce(AsyncResult):
    """An AsyncResult whose streamed output (``stream_output``) is sent once and bounded by
    ``output_limit`` characters per engine and stream (0: no bound)."""

    output_limit = 0

    @contextmanager
    def stream_output(self) -> Iterator[None]:
        self._counted: dict[tuple[int, str], int] = {}  # characters of each engine's stream so far
        self._segments: dict[tuple[int, str], Segment] = {}
        with super().stream_output():
            yield

    def _iopub_streaming_output_callback(self, eid: int, msg_future: Any, msg: dict) -> None:
        if msg["header"]["msg_type"] != "stream":
            return super()._iopub_streaming_output_callback(eid, msg_future, msg)
        name, text = msg["content"]["name"], msg["content"]["text"]
        text = self._bounded(eid, name, text)
        if not text:
            return
        if getattr(get_ipython(), "kernel", None) is None:  # a terminal: ipyparallel's prints append
            return super()._iopub_streaming_output_callback(
                eid, msg_future, {**msg, "content": {**msg["content"], "text": text}}
            )
        self._show(eid, name, text)

    def _bounded(self, eid: int, name: str, text: str) -> str:
        """``text`` as far as the bound allows, with the line that says the rest is not shown."""
        if not self.output_limit:
            return text
        before = self._counted.get((eid, name), 0)
        self._counted[(eid, name)] = before + len(text)
        if before + len(text) <= self.output_limit:
            return text
        if before > self.output_limit:
            return ""
        index = self._targets.index(eid) if isinstance(self._targets, list) else 0
        return text[: self.output_limit - before] + (
            f"\n[{name}:{eid}] output past {self.output_limit:,} characters is not shown "
            f"(c.IPCluster.output_limit); %%px -o NAME keeps all of it in NAME.{name}[{index}]\n"
        )

    def _show(self, eid: int, name: str, text: str) -> None:
        """Add ``text`` to the display of engine ``eid``'s stream ``name``, or start the next."""
        segment = self._segments.get((eid, name))
        if segment is not None and len(segment.text) < SEGMENT:
            segment.text += text
            update = True
        else:
            segment = self._segments[(eid, name)] = Segment(uuid.uuid4().hex, f"[{name}:{eid}] {text}")
            update = False
        publish_display_data(
            {"text/plain": segment.text}, transient={"display_id": segment.display_id}, update=update
        )
