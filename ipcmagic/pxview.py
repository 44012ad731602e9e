"""The view ``%px`` runs on: what is the same for every engine is sent once.

ipyparallel's DirectView (``client[:]``, what ``%px`` used) sends a copy of the code and data per
engine from the kernel, through one socket: pushing 8 MiB to 64 engines sends 512 MiB. A
BroadcastView sends it once to the controller, which hands it on to each engine.
"""

from __future__ import annotations

from typing import Any

from ipyparallel.client.view import BroadcastView

from .internals import fits


class PxView(BroadcastView):
    """A blocking BroadcastView for ``execute``, ``apply`` and ``push``; what differs per engine
    (``scatter``, ``map``) goes as a DirectView sends it: a broadcast gains nothing there, and
    BroadcastView's own ``map`` fails on a blocking view (``'list' object has no attribute 'owner'``)."""

    def _direct(self) -> Any:
        view = self.client.direct_view(self.targets)
        view.block, view.track = self.block, self.track
        return view

    def scatter(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct().scatter(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        return self._direct().map(*args, **kwargs)


def px_view(client: Any) -> Any:
    """A :class:`PxView` of every engine of ``client``; ipyparallel's DirectView if the client no
    longer has the broadcast socket that :meth:`~ipyparallel.Client.broadcast_view` uses."""
    socket = getattr(client, "_broadcast_stream", None)
    if fits("Client._broadcast_stream", socket is not None, "the client has no broadcast socket"):
        view = PxView(client=client, socket=socket, targets=client.ids)
    else:
        view = client[:]
    view.block = True
    return view
