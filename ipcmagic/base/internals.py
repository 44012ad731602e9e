"""Guards for ipcmagic's reaches into its dependencies' internals (docs/internals.md lists them).

Each reach first checks the shape it relies on (a name, a signature, what a module holds); when
the shape differs, ipcmagic keeps the dependency's stock behaviour, slower but never broken, and
says why once, at debug level, on the ``ipcmagic.base.internals`` logger.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

log = logging.getLogger("ipcmagic.base.internals")
_said: set[str] = set()


def fits(reach: str, ok: bool, why: str) -> bool:
    """Whether ``reach`` may go ahead; when not, log ``why`` (once per reach and process)."""
    if not ok and reach not in _said:
        _said.add(reach)
        log.debug("%s: %s; the stock behaviour stays", reach, why)
    return ok


def parameters(fn: Callable | None) -> list[str] | None:
    """The names of ``fn``'s parameters, or None if it has no signature (or is no callable)."""
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
