"""``python -m ipcmagic kernel install``: a real kernel started from the installed spec."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from jupyter_client.manager import start_new_kernel

from ipcmagic.kernel import kernel_env

PROBE = "import os, sys, hypothesis; print(sys.prefix, os.environ.get('VIRTUAL_ENV'), hypothesis.__version__)"


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A software stack on PYTHONPATH whose copy of a package shadows the venv's (as uenv does)."""
    base = tmp_path / "stack"
    (base / "hypothesis").mkdir(parents=True)
    (base / "hypothesis" / "__init__.py").write_text("__version__ = '0.0-stack'\n")
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    return {"PYTHONPATH": str(base)}


def installed_kernel_says(name: str, options: list[str], stack: dict[str, str], monkeypatch) -> list[str]:
    """Install the kernel with the stack's PYTHONPATH, start it as JupyterHub would (without it)."""
    subprocess.run(
        [sys.executable, "-m", "ipcmagic", "kernel", "install", "--name", name, *options],
        env={**os.environ, **stack},
        check=True,
    )
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    km, kc = start_new_kernel(kernel_name=name)
    try:
        out = []
        reply = kc.execute_interactive(PROBE, output_hook=lambda m: out.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(out).split()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_venv_wins_over_the_stack_with_prepend_site_packages(stack, monkeypatch):
    prefix, venv, found = installed_kernel_says("ipcm-test", ["--prepend-site-packages"], stack, monkeypatch)
    assert prefix == sys.prefix and venv == sys.prefix
    assert found == version("hypothesis"), "the venv's hypothesis, not the stack's"


def test_without_it_the_stack_shadows_the_venv(stack, monkeypatch):
    """The problem --prepend-site-packages solves, shown on the same setup."""
    *_, found = installed_kernel_says("ipcm-plain", [], stack, monkeypatch)
    assert found == "0.0-stack"


def test_kernel_env_puts_the_venv_first():
    env = kernel_env({"PATH": "/usr/bin", "PYTHONPATH": "/stack"}, prepend_site_packages=True)
    if sys.prefix != sys.base_prefix:
        assert (
            env["PATH"].split(":")[:2] == [f"{sys.prefix}/bin", "/usr/bin"]
            and env["VIRTUAL_ENV"] == sys.prefix
        )
    assert env["PYTHONPATH"].split(":")[1:] == ["/stack"] and "site-packages" in env["PYTHONPATH"]
    assert "PYTHONPATH" not in kernel_env({"PATH": "/usr/bin"})


def kernel_install(*options: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ipcmagic", "kernel", "install", *options]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)


def test_install_says_what_to_change_and_replaces_nothing_unasked(tmp_path):
    """A bad name printed a traceback; an install replaced an existing kernel silently (hand edits
    and files in its directory lost); each install left a /tmp/tmp*_kernels directory."""
    env = {"JUPYTER_DATA_DIR": str(tmp_path / "data"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    bad = kernel_install("--name", "my env", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'my env' cannot be a kernel name" in bad.stderr and "--name my-env" in bad.stderr
    assert kernel_install("--name", "mine", env=env).returncode == 0
    spec = tmp_path / "data" / "kernels" / "mine"
    (spec / "notes.txt").write_text("mine")
    again = kernel_install("--name", "mine", "--display-name", "Other", env=env)
    assert again.returncode == 2 and "already installed" in again.stderr and "--replace" in again.stderr
    assert (spec / "notes.txt").exists() and '"mine"' in (spec / "kernel.json").read_text()
    replaced = kernel_install("--name", "mine", "--display-name", "Other", "--replace", env=env)
    assert replaced.returncode == 0 and '"Other"' in (spec / "kernel.json").read_text()
    assert list((tmp_path / "tmp").iterdir()) == [], "nothing left in the temporary directory"
