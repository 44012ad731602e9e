"""A parallel execute that ends when one of its engines fails while the others still run.

One rank raises, the others wait for it in an MPI call, and ipyparallel's ``%%px`` waits for all of
them forever (ipyparallel#435). Here the wait of a ``%px`` cell, an ``%autopx`` cell or a blocking
``ipcmagic.view().execute`` watches each engine's reply: when one is an error and the others are
still running :data:`SETTLE` seconds later, the view's ``on_failure`` ends them (the cluster
interrupts them, and restarts them if they are stuck) and the execute fails with that engine's
error first, and one line on the others. Where the others finish by themselves within
:data:`SETTLE`, nothing differs from ipyparallel's DirectView.

An engine that was lost (it died, or was let go by the heartbeats) is first left to the launcher:
srun or mpirun usually end the whole step within about a second, and :mod:`ipcmagic.cluster.losses` says
how. Only engines still running :data:`LOSS_SETTLE` seconds after a loss are ended here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ipyparallel.client.asyncresult import AsyncResult
from ipyparallel.error import CompositeError, RemoteError

from ..base.internals import fits, parameters
from .halting import lost_a_peer, running, was_lost
from .streaming import StreamedOnce

#: seconds the other engines have to finish after one failed, before they count as still running
SETTLE = 0.25
#: the same after one was lost: srun ends a step about 1.1 s after one of its tasks died
LOSS_SETTLE = 1.5


class FailedFast(CompositeError):
    """One engine's error ended a parallel execute while others ran; ``elist`` holds that error,
    the message says what became of the others (in IPython the magics say it after the error)."""


class FailFastResult(StreamedOnce):
    """The AsyncResult of ``%px``'s executes: its output streamed once and bounded
    (:class:`~ipcmagic.cluster.streaming.StreamedOnce`); with ``on_failure``, an execute on several engines
    whose :meth:`wait` ends the others when one fails: ``on_failure(result, failed_engine_id,
    lost)`` ends them and returns the line on them (None: they had ended by themselves)."""

    def __init__(
        self,
        result: AsyncResult,
        on_failure: Callable[[AsyncResult, int, bool], str | None] | None,
        output_limit: int = 0,
        heartbeat_tolerance: float = 0.0,
    ):
        self._failed: tuple[int, float, bool, bool] | None = None  # the first failed engine's index,
        # when its others count as still running, whether it was lost, and whether it blamed a peer
        self.heartbeat_tolerance = heartbeat_tolerance
        self.interrupted = False  # a wait for it was interrupted (the kernel's interrupt button)
        self._note: str | None = None  # what on_failure said: the execute has failed fast
        self._alarm = threading.Event()  # an engine failed, or all finished
        self._on_failure = on_failure
        self._error: FailedFast | None = None
        self._quiet: set[int] = set()  # engines ended on purpose, whose errors are not streamed
        self.output_limit = output_limit
        children = result._children[0] if result._single_result else list(result._children)  # one engine's
        super().__init__(
            result._client,
            children,
            result._fname,
            result._targets,
            owner=True,
            return_exceptions=result._return_exceptions,
        )
        if on_failure is None:
            return
        for index, child in enumerate(self._children):
            child.add_done_callback(lambda child, index=index: self._child_done(index, child))
        self.add_done_callback(lambda _: self._alarm.set())

    def _child_done(self, index: int, child: Any) -> None:
        """An engine replied (in the client's thread): note the first that failed. A rank whose
        collective says a peer ended gives way to the peer's loss, which the controller tells
        within the heartbeat tolerance: the lost one is named as the cause."""
        error = child.result()
        if not isinstance(error, Exception):
            return
        lost, blamed = was_lost(error), lost_a_peer(error)
        if self._failed is None or (lost and self._failed[3] and self._note is None):
            settle = LOSS_SETTLE if lost else self.heartbeat_tolerance + LOSS_SETTLE if blamed else SETTLE
            self._failed = (index, time.monotonic() + settle, lost, blamed)
            self._alarm.set()

    def wait(self, timeout: float | None = -1, return_when: Any = None) -> Any:
        try:
            return self._wait(timeout, return_when)
        except KeyboardInterrupt:
            self.interrupted = True
            raise

    def _wait(self, timeout: float | None, return_when: Any) -> Any:
        if return_when is not None or self._note is not None or self._on_failure is None:
            return super().wait(timeout, return_when)
        end = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            self._alarm.clear()  # before looking: an alarm from now on wakes the wait below
            if self._ready:
                break
            left = None if end is None else end - time.monotonic()
            if self._failed is not None:
                settled = self._failed[1] - time.monotonic()
                if settled <= 0:
                    self._fail_fast(self._failed[0], self._failed[2])
                    return super().wait(-1 if end is None else max(0.0, end - time.monotonic()))
                left = settled if left is None else min(left, settled)
            if left is not None and left <= 0:
                break
            self._alarm.wait(left)
        return super().wait(0)

    def _fail_fast(self, index: int, lost: bool) -> None:
        """End the engines still running, say so, and fail with engine ``index``'s error."""
        self._quiet = set(running(self))
        self._note = ""  # from now on the errors are collected as this one's (in the client's thread)
        self._note = self._on_failure(self, self._targets[index], lost) or ""
        for eid, child in zip(self._targets, self._children, strict=True):
            if child.output.metadata["engine_id"] is None:  # restarted: no reply said whose it is
                child.output.metadata["engine_id"] = eid
        if self._error is not None:
            self._error.msg = self._note

    def _iopub_streaming_output_callback(self, eid: int, msg_future: Any, msg: dict) -> None:
        """While streaming, the errors of the engines ended on purpose are not shown: the line on
        them says what happened."""
        if msg["header"]["msg_type"] == "error" and eid in self._quiet:
            return
        super()._iopub_streaming_output_callback(eid, msg_future, msg)

    def _collect_exceptions(self, results: list) -> list:
        if self._note is None:
            return super()._collect_exceptions(results)
        error = results[self._failed[0]]
        if isinstance(error, RemoteError):
            elist = [(error.ename, error.evalue, error.traceback, error.engine_info)]
        else:  # ipyparallel's own, e.g. TaskAborted: a request an interrupted engine dropped
            name, engine = type(error).__name__, {"engine_id": self._targets[self._failed[0]]}
            elist = [(name, str(error), f"{name}: {error}", engine)]
        self._error = FailedFast(self._note, elist)
        raise self._error


def result_fits(result: AsyncResult) -> bool:
    """Whether ipyparallel's AsyncResult, as ``result`` shows it, has what :class:`FailFastResult`
    builds on."""
    callback = getattr(AsyncResult, "_iopub_streaming_output_callback", None)
    return fits(
        "AsyncResult internals",
        parameters(callback) == ["self", "eid", "msg_future", "msg"]
        and callable(getattr(AsyncResult, "_collect_exceptions", None))
        and all(hasattr(result, name) for name in RESULT_PARTS),
        "its streaming callback, exception collection or parts changed",
    )


#: what :class:`FailFastResult` takes from the result it replaces
RESULT_PARTS = ("_client", "_children", "_fname", "_targets", "_single_result", "_return_exceptions")
