"""A plain ``ipyparallel.Client()`` in a kernel whose ipcmagic cluster runs connects to that cluster,
as it did with ipcmagic 1.x, whose clusters used the default profile.

ipyparallel's Client, told nothing, reads ``ipcontroller-client.json`` in the default profile's
security directory. ipcmagic writes nothing there: two notebooks of one user would race for that
one file, and it would outlive a killed kernel. Instead, in the kernel only, a Client created
without saying where to connect gets the running cluster's own connection file (in the cluster's
private directory, gone with the cluster). Other processes see ipyparallel's default unchanged.

This wraps ``ipyparallel.Client.__init__`` (ipyparallel has no hook for a default connection);
it is guarded: when the signature is not the one relied on, Client stays as ipyparallel ships it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .base.internals import fits, parameters

#: Client arguments that say where to connect; a Client given none of them looks in the profile
_WHERE = ("url_file", "url_or_file", "profile_dir", "cluster_id", "ipython_dir", "sshserver")
_MARK = "_ipcmagic_default_connection"
#: the connection file of the kernel's running cluster, or None (the last install's)
_kernel_cluster: Callable[[], str | None] | None = None


def _connects_by_default(connection_info: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a Client with these arguments would look for the default profile's cluster."""
    told = connection_info is not None or any(kwargs.get(name) for name in _WHERE)
    return not told and kwargs.get("profile") in (None, "", "default")


def _relied_on(init: Any) -> bool:
    """Whether ``Client.__init__`` still takes ``connection_info`` first and the profile keywords."""
    params = parameters(init) or []
    return params[1:2] == ["connection_info"] and {"profile", "profile_dir", "cluster_id"} <= set(params)


def install(connection_file: Callable[[], str | None]) -> None:
    """Make a plain ``ipyparallel.Client()`` in this process reach the cluster whose file
    ``connection_file()`` names while one runs (Client is wrapped once; the last call's
    ``connection_file`` counts)."""
    from ipyparallel import Client

    global _kernel_cluster
    _kernel_cluster = connection_file
    init = Client.__init__
    if getattr(init, _MARK, False):
        return
    if not fits("Client.__init__", _relied_on(init), "its signature changed"):
        return

    @functools.wraps(init)
    def __init__(self: Any, connection_info: Any = None, *args: Any, **kwargs: Any) -> None:
        if _connects_by_default(connection_info, kwargs):
            connection_info = _kernel_cluster()
        init(self, connection_info, *args, **kwargs)

    setattr(__init__, _MARK, True)
    Client.__init__ = __init__
