"""The software environment a kernel runs in (a uenv, a container) and its known traps."""

from __future__ import annotations

import sys
from collections.abc import Mapping


def in_uenv(env: Mapping[str, str]) -> bool:
    """Whether ``env`` is a uenv's (CSCS): uenv sets UENV_MOUNT_LIST, and UENV_VIEW for a view."""
    return bool(env.get("UENV_MOUNT_LIST") or env.get("UENV_VIEW"))


def traps(env: Mapping[str, str]) -> list[str]:
    """What in ``env``, the variables of engines or ranks, is known to go wrong, in words."""
    found = []
    if in_uenv(env) and env.get("NCCL_NET_PLUGIN", "").lower() == "ofi":
        found.append(
            "NCCL_NET_PLUGIN=ofi in a uenv: NCCL then finds no network plugin and falls back to "
            "TCP sockets, many times slower between nodes (CSCS: do not set it with uenvs; the "
            "uenv's plugin is found without it). Unset it in the notebook or the site's profile."
        )
    return found


def warn_of_traps(env: Mapping[str, str]) -> None:
    """One ``ipcmagic: warning:`` line on stderr for each of the traps in ``env``."""
    for trap in traps(env):
        print(f"ipcmagic: warning: {trap}", file=sys.stderr, flush=True)
