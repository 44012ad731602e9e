"""Replies from engines that ipyparallel sends without canning them."""

from __future__ import annotations

import pickle
from typing import Any

from ipyparallel.serialize.serialize import PrePickled


class Plain(PrePickled):
    """Plain values (None, numbers, strings, and lists and dicts of them) as an engine's reply,
    pickled as they are. ipyparallel's canning would first import numpy to look for arrays that
    plain values cannot hold: a quarter of an engine's CPU time to start, before the user asked."""

    def __init__(self, value: Any) -> None:
        self.buffers = [pickle.dumps(value)]
