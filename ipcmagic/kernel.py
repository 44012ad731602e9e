"""A Jupyter kernel for the Python environment this runs in (``python -m ipcmagic kernel install``).

The kernelspec carries what a kernel started by JupyterHub would otherwise lack: ``PATH`` and
``VIRTUAL_ENV`` of the virtual environment, the ``PYTHONPATH`` of the software stack (uenv,
modules) it sits on, and — with ``prepend_site_packages`` — the environment's own site-packages
first on ``PYTHONPATH``, so its packages win over the stack's copies.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping


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


def install(
    name: str,
    *,
    display_name: str | None = None,
    prefix: str | None = None,
    prepend_site_packages: bool = False,
) -> str:
    """Install the kernelspec ``name`` for this interpreter, per user or under ``prefix``;
    return its directory."""
    from ipykernel import kernelspec

    return kernelspec.install(
        user=prefix is None,
        prefix=prefix,
        kernel_name=name,
        display_name=display_name or name,
        env=kernel_env(prepend_site_packages=prepend_site_packages),
    )
