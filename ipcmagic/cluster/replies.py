"""Replies from engines that ipyparallel sends without canning them."""

from __future__ import annotations

import pickle
from typing import Any

from ..base.internals import fits


def plain(value: Any) -> Any:
    """Plain values (None, numbers, strings, and lists and dicts of them) as an engine's reply,
    pickled as they are. ipyparallel's canning would first import numpy to look for arrays that
    plain values cannot hold: a quarter of an engine's CPU time to start, before the user asked.

    The reply is an ipyparallel ``PrePickled`` whose buffers are the pickle; where ipyparallel no
    longer sends those as they are, the value itself (canned as usual)."""
    from ipyparallel.serialize import serialize

    pre_pickled = getattr(serialize, "PrePickled", None)
    reply = object.__new__(pre_pickled) if isinstance(pre_pickled, type) else None
    try:
        reply.buffers = [pickle.dumps(value)]
        passes = serialize.serialize_object(reply) == reply.buffers
    except Exception:  # no PrePickled, or not one that is sent as it is
        passes = False
    return reply if fits("ipyparallel's PrePickled", passes, "it is no longer sent as it is") else value
