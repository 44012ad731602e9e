"""The container a kernel runs in, where a job was started with one (pyxis, CSCS's Container
Engine: ``--environment EDF.toml`` or ``--container-image``): what ipcmagic's steps inherit from it,
and what ``srun`` needs inside it.

sbatch and salloc leave a job's container options in its environment as Slurm does for every
SPANK plugin's options (``SLURM_SPANK__SLURM_SPANK_OPTION_pyxis_environment=EDF``; salloc also
``_SLURM_SPANK_OPTION_pyxis_environment``), and every ``srun`` in the job reads either back as its
own option: an ``srun`` from the kernel enters the kernel's container again, and one with another
``--environment`` is refused ("--environment specified multiple times") unless it goes without
them (:func:`without_container`).

Each ``srun`` task starts a new container from the image: the image's ``ENV`` wins over the
kernel's variables (a venv on top of the image would be lost in a step, hence
:func:`kept_activation`), and what the kernel wrote into its container's own files (its ``/tmp``)
is not there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from IPython.core.error import UsageError

#: the prefixes of the container options a job leaves in its environment (pyxis's plugin name)
SPANK_PREFIXES = ("SLURM_SPANK__SLURM_SPANK_OPTION_pyxis_", "_SLURM_SPANK_OPTION_pyxis_")
#: what a venv's activation sets, which an image's ``ENV`` may override in a step
ACTIVATION = ("PATH", "VIRTUAL_ENV")
#: the prefix of the kernel's activation as its steps get it (:func:`reactivate`)
KEPT_PREFIX = "IPCMAGIC_KERNEL_"
#: CSCS's EDF lines for srun inside a container (cscs-docs, JupyterLab: a custom PyTorch container)
CSCS_MOUNTS = ("/etc/slurm", "/usr/lib64/libslurm-uenv-mount.so", "/etc/container_engine_pyxis.conf")


def session_container(env: Mapping[str, str]) -> str:
    """The EDF (or image) of the container the kernel's job runs in, or "" outside one."""
    options = [prefix + name for name in ("environment", "container_image") for prefix in SPANK_PREFIXES]
    return next((env[option] for option in options if env.get(option)), "")


def without_container(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for an srun with a container of its own: without the job's container options, and
    without ``VIRTUAL_ENV`` (the kernel's venv is not active there)."""
    return {
        name: value
        for name, value in env.items()
        if not name.startswith(SPANK_PREFIXES) and name != "VIRTUAL_ENV"
    }


def kept_activation(env: Mapping[str, str]) -> dict[str, str]:
    """In a container: the kernel's ``PATH`` and ``VIRTUAL_ENV`` under names no image sets, for
    ipcmagic's engines and ranks to restore (:func:`reactivate`); nothing outside one."""
    if not session_container(env):
        return {}
    return {KEPT_PREFIX + name: env[name] for name in ACTIVATION if name in env}


def reactivate(environ: MutableMapping[str, str]) -> None:
    """Restore what :func:`kept_activation` kept: the kernel's venv is active in the step too."""
    for kept in [name for name in environ if name.startswith(KEPT_PREFIX)]:
        environ[kept.removeprefix(KEPT_PREFIX)] = environ.pop(kept)


def missing_slurm_files(env: Mapping[str, str]) -> list[str]:
    """In a container: what srun needs from the host and cannot see here, the Slurm configuration's
    directory or the files its plugin stack names; empty outside a container."""
    if not session_container(env):
        return []
    conf = Path(env.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    if not conf.is_file():
        return [str(conf.parent)]
    found = re.search(r"^\s*PlugStackConfig\s*=\s*(\S+)", conf.read_text(errors="replace"), re.M | re.I)
    plugstack = Path(found[1]) if found else conf.parent / "plugstack.conf"
    return [path for path in _plugstack_files(plugstack) if not Path(path).exists()]


def _plugstack_files(plugstack: Path) -> list[str]:
    """The plugins and the included files that ``plugstack`` names: its ``required`` plugins and
    its includes (not those by pattern, which may match nothing)."""
    if not plugstack.is_file():
        return []
    named = []
    for line in plugstack.read_text(errors="replace").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] in ("required", "include") and not set("*?[") & set(words[1]):
            named.append(words[1])
    return named


def require_slurm_files(env: Mapping[str, str]) -> None:
    """UsageError naming the mounts to add where the kernel's container lacks what srun needs
    (srun would retry its configuration for 60 s, then fail with a loader or parse error)."""
    missing = missing_slurm_files(env)
    if missing:
        edf, cscs = session_container(env), ", ".join(f'"{mount}"' for mount in CSCS_MOUNTS)
        raise UsageError(
            f"This kernel runs in a container ({edf}) without what srun needs from the host: "
            f"{', '.join(missing)}. Add {'it' if len(missing) == 1 else 'them'} to the EDF's mounts "
            f"(at CSCS: mounts = [{cscs}, ...]) and start the session again."
        )


def step_container(environment: str, env: Mapping[str, str]) -> str:
    """Which container a step with ``--environment`` runs in, said once per run."""
    kernel = session_container(env)
    return f"the container of {environment}" + (f", not this kernel's ({kernel})" if kernel else "")
