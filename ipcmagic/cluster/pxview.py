"""The view ``%px`` runs on: ipyparallel's DirectView, whose blocking push to many engines is sent once.

A DirectView (``client[:]``) sends a copy of the data per engine from the kernel, through one
socket: pushing 8 MiB to 64 engines sends 512 MiB. The controller's broadcast scheduler takes it
once and hands it on to each engine. Everything else is DirectView's own, so ``%px`` behaves as
ipyparallel's ``%px`` does (ipyparallel's own magics and view tests are run against this view).

A push is broadcast only where that is provably the same as DirectView's: blocking, untracked, to
more than one engine, with nothing outstanding on those engines. The broadcast takes another path
through the controller than a DirectView's messages, so nothing may be in flight on either side of
it: nothing earlier (checked), nothing later (it is waited for; after an interrupt of that wait,
this view's next call waits for it first). ipyparallel's BroadcastView itself is not used as a
view: its results never leave the client's caches and ``rc.wait()`` waits forever on the message it
sent (issue 29).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ipyparallel.client.asyncresult import AsyncResult
from ipyparallel.client.futures import multi_future
from ipyparallel.client.view import BroadcastView, DirectView

from ..base.internals import fits
from .failfast import FailFastResult, result_fits

#: the client's per-message caches, which ipyparallel empties when a DirectView's reply arrives
CACHES = ("results", "_futures", "_output_futures", "metadata")


class PxView(DirectView):
    """A DirectView whose blocking push to several idle engines goes out once, whose execute on
    several engines fails fast (:mod:`ipcmagic.cluster.failfast`) while ``fail_fast`` holds, and whose
    executes stream their output once (:mod:`ipcmagic.cluster.streaming`)."""

    _interrupted: AsyncResult | None = None
    #: whether an execute ends when one engine fails while others run (False: wait for all)
    fail_fast = True
    #: characters of each engine's stdout and stderr an execute streams (0: all)
    output_limit = 0
    #: seconds the controller waits for a silent engine's heartbeat before it lets the engine go
    heartbeat_tolerance = 0.0
    #: what ends the others then, and says what became of them (the cluster's)
    on_failure: Callable[[AsyncResult, int, bool], str | None] | None = None
    #: called before anything is sent: finishes a restart of the engines begun after a failure
    settle: Callable[[], None] | None = None
    #: the last execute's result, which ``%px`` waits for (the cluster ends it after an interrupt)
    last: AsyncResult | None = None

    def push(
        self, ns: dict, targets: Any = None, block: bool | None = None, track: bool | None = None
    ) -> Any:
        self._settle()
        block = self.block if block is None else block
        track = self.track if track is None else track
        targets = self.targets if targets is None else targets
        if isinstance(ns, dict) and block and not track and self._broadcasts_to(targets):
            return self._broadcast_push(ns, targets)
        return super().push(ns, targets=targets, block=block, track=track)

    def _really_apply(self, *args: Any, **kwargs: Any) -> Any:
        self._settle()
        return super()._really_apply(*args, **kwargs)

    def execute(
        self, code: str, silent: bool = True, targets: Any = None, block: bool | None = None, **kwargs: Any
    ) -> Any:
        self._settle()
        block = self.block if block is None else block
        # kwargs: ipyparallel 9.2's label, which 9.0 does not have
        result = super().execute(code, silent=silent, targets=targets, block=False, **kwargs)
        if result_fits(result):  # streamed once; failing fast where it can
            fails_fast = self.fail_fast and len(result) > 1
            on_failure = self.on_failure if fails_fast else None
            result = FailFastResult(result, on_failure, self.output_limit, self.heartbeat_tolerance)
            self.last = result
        if block:  # as DirectView's
            try:
                result.get()
                result.wait_for_output()
            except KeyboardInterrupt:
                pass
        return result

    def map(self, *args: Any, **kwargs: Any) -> Any:
        self._settle()
        return super().map(*args, **kwargs)

    def _broadcasts_to(self, targets: Any) -> bool:
        """Whether ``targets`` are several engines with nothing outstanding, and the client has the
        parts a broadcast push needs."""
        client = self.client
        if isinstance(targets, int) or not broadcast_fits(client):
            return False
        idents = client._build_targets(targets)[0]
        pending = client._outstanding_dict
        return len(idents) > 1 and not any(pending.get(i.decode()) for i in idents)

    def _broadcast_push(self, ns: dict, targets: Any) -> Any:
        """DirectView's blocking push, sent once; the client left as a DirectView's reply leaves it."""
        client = self.client
        sender = BroadcastView(client=client, socket=client._broadcast_stream, targets=targets)
        result = sender.push(ns, block=False)
        (envelope,) = sender.history  # the message sent; only its per-engine copies get replies
        client.outstanding.discard(envelope)
        forget(client, envelope)
        if client.history and client.history[-1] == envelope:
            client.history[-1:] = result.msg_ids
        for msg_id in result.msg_ids:  # as ipyparallel's Client._send does for each message
            replied = multi_future([client._futures[msg_id], client._output_futures[msg_id]])
            replied.add_done_callback(partial(forget, client, msg_id))
        self.history.extend(result.msg_ids)
        self.outstanding.update(result.msg_ids)
        try:
            return result.get()
        except KeyboardInterrupt:  # as DirectView: the push goes on, its AsyncResult is returned
            self._interrupted = result
            return result
        finally:
            self._sync_results()

    def _settle(self) -> None:
        """Wait for a restart of the engines, and for an interrupted broadcast, so that no later
        message overtakes it."""
        if self.settle is not None:
            self.settle()
        if self._interrupted is not None:
            self._interrupted.wait()
            self._interrupted = None


def forget(client: Any, msg_id: str, _: Any = None) -> None:
    """Drop what the client caches of a message (its AsyncResult keeps what it needs)."""
    for cache in CACHES:
        getattr(client, cache).pop(msg_id, None)


def broadcast_fits(client: Any) -> bool:
    """Whether the client has the broadcast socket and the bookkeeping a broadcast push fixes up."""
    socket = getattr(client, "_broadcast_stream", None)
    if not fits("Client._broadcast_stream", socket is not None, "the client has no broadcast socket"):
        return False
    parts = ("outstanding", "history", "_outstanding_dict", *CACHES)
    return fits(
        "Client caches", all(hasattr(client, name) for name in parts), f"the client lacks one of {parts}"
    )


def px_view(
    client: Any, settle: Callable[[], None] | None = None, on_failure: Callable | None = None
) -> PxView:
    """A blocking :class:`PxView` of every engine of ``client``; ``settle`` and ``on_failure`` as
    the view's attributes say."""
    view = PxView(client=client, socket=client._mux_stream, targets=client.ids)
    view.block, view.settle, view.on_failure = True, settle, on_failure
    return view
