"""The launch commands: which one ``auto`` means here, and whether it is on PATH."""

from __future__ import annotations

import shlex
import shutil

from IPython.core.error import UsageError

from .slurm import Allocation


def resolve_launcher(
    launcher: str, allocation: Allocation | None, choices: tuple[str, ...], outside: str
) -> str:
    """The launcher that ``auto`` means here (srun in an allocation, else ``outside``), or UsageError
    for one not in ``choices`` or impossible here."""
    if launcher not in choices:
        raise UsageError(f"Unknown launcher {launcher!r}; use one of {', '.join(choices)}.")
    if launcher == "auto":
        return "srun" if allocation else outside
    if launcher == "srun" and allocation is None:
        raise UsageError(
            "The srun launcher needs a Slurm allocation, but SLURM_JOB_ID is not set; "
            f"run the notebook inside salloc/sbatch or use --launcher {outside}."
        )
    return launcher


def require_command(command: str) -> None:
    """UsageError unless ``command`` (srun, mpirun) is on PATH."""
    if not shutil.which(command):
        raise UsageError(f"{command} is not on PATH; load it (e.g. module load) or use another launcher.")


def shell_words(text: str, option: str) -> list[str]:
    """``text`` split as a shell splits it; UsageError naming ``option`` where it cannot be."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise UsageError(f"{option} {text!r} is not valid shell syntax: {e}.") from None
