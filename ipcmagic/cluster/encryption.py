"""CurveZMQ and signing keys made for each cluster, where only the cluster's processes read them."""

from __future__ import annotations

import os
import secrets

from traitlets.config import Config


def encrypt(config: Config, profile_dir: str) -> None:
    """CurveZMQ on every connection of the cluster whose controller ``config`` starts: the
    controller makes the keys; its public one, which every peer needs, is only in the cluster's
    private files (0600 in the 0700 ``profile_dir``) and the engines' private environment.

    Messages stay signed with a fresh HMAC key too: ipyparallel turns signing off with CurveZMQ
    unless the controller's configuration names a key (every engine then warns "Message signing
    is disabled. This is insecure"). The key goes in the controller's configuration file in
    ``profile_dir`` (never on a command line), and from there into the connection files as ever.
    CurveZMQ is asked for in the controller's environment: a command-line option would be read
    before that file, and turn signing off."""
    add_controller_env(config, {"IPP_ENABLE_CURVE": "1"})
    path = os.path.join(profile_dir, "ipcontroller_config.py")  # bytes: JSON has none
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"c.Session.key = {secrets.token_hex(32).encode()!r}\n")


def add_controller_env(config: Config, env: dict[str, str]) -> None:
    """``env`` in the environment of the controller that ``config`` starts."""
    controller = config.LocalControllerLauncher
    controller.environment = {**controller.get("environment", {}), **env}
