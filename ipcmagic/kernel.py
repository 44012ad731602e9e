"""A Jupyter kernel for the Python environment this runs in (``python -m ipcmagic kernel install``).

The kernelspec carries what a kernel started by JupyterHub would otherwise lack: ``PATH`` and
``VIRTUAL_ENV`` of the virtual environment, the ``PYTHONPATH`` of the software stack (uenv,
modules) it sits on, and — with ``prepend_site_packages`` — the environment's own site-packages
first on ``PYTHONPATH``, so its packages win over the stack's copies.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import tempfile
from collections.abc import Mapping

#: what Jupyter accepts as a kernel name (jupyter_client's rule; it lower-cases names)
NAME = re.compile(r"[a-z0-9._-]+", re.IGNORECASE)


class KernelInstallError(ValueError):
    """A kernel cannot be installed as asked; the message says what to change."""


def kernel_env(
    environ: Mapping[str, str] = os.environ, *, prepend_site_packages: bool = False
) -> dict[str, str]:
    """The environment variables the kernelspec sets for the kernel."""
    env: dict[str, str] = {}
    venv = sys.prefix if sys.prefix != sys.base_prefix else ""  # the kernel runs sys.executable
    if venv:
        bin_dir = os.path.join(venv, "bin")
        path = [p for p in environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
        env["PATH"] = os.pathsep.join([bin_dir, *path])
        env["VIRTUAL_ENV"] = venv
    pythonpath = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if prepend_site_packages:
        site_packages = sysconfig.get_paths()["purelib"]
        pythonpath = [site_packages, *(p for p in pythonpath if p != site_packages)]
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return env


def destination(name: str, prefix: str | None = None) -> str:
    """Where the kernelspec ``name`` goes: the user's Jupyter data directory, or under ``prefix``."""
    from jupyter_core.paths import jupyter_data_dir

    kernels = os.path.join(os.path.abspath(prefix), "share", "jupyter") if prefix else jupyter_data_dir()
    return os.path.join(kernels, "kernels", name.lower())


def install(
    name: str,
    *,
    display_name: str | None = None,
    prefix: str | None = None,
    prepend_site_packages: bool = False,
    replace: bool = False,
) -> str:
    """Install the kernelspec ``name`` for this interpreter, per user or under ``prefix``;
    return its directory. An existing one is replaced only with ``replace``."""
    from ipykernel import kernelspec

    if not NAME.fullmatch(name):
        suggestion = re.sub(r"[^a-z0-9._-]+", "-", name, flags=re.IGNORECASE).strip("-") or "my-env"
        raise KernelInstallError(
            f"{name!r} cannot be a kernel name: use ASCII letters, digits, '.', '_' and '-' only, "
            f"e.g. --name {suggestion} (--display-name may be anything)."
        )
    where = destination(name, prefix)
    if os.path.exists(where) and not replace:
        raise KernelInstallError(
            f"A kernel {name.lower()!r} is already installed in {where}; pass --replace to replace it "
            "(with every file in that directory), or choose another --name."
        )
    # ipykernel writes the spec into a new temporary directory and removes only the spec from it
    with tempfile.TemporaryDirectory() as scratch:
        default, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            return kernelspec.install(
                user=prefix is None,
                prefix=prefix,
                kernel_name=name,
                display_name=display_name or name,
                env=kernel_env(prepend_site_packages=prepend_site_packages),
            )
        finally:
            tempfile.tempdir = default
