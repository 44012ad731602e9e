"""What a failed start says: the real cause where it shows, with the launcher's output."""

from __future__ import annotations

import re

from .plan import EnginePlan

_NO_CONNECTION_FILE = re.compile(r"Connection file '[^']*/ipcontroller-engine\.json' not found")


def start_failure(plan: EnginePlan, error: BaseException, output: str, ready: int, timeout: float) -> str:
    """The message of a failed start: the real cause where it shows, with the launcher's output."""
    from ipyparallel.error import EngineError

    if isinstance(error, TimeoutError) and _NO_CONNECTION_FILE.search(output):
        reason = (
            "the engines did not receive ipcmagic's environment: they looked for ipyparallel's "
            "default connection file instead of this cluster's. Something between the kernel and the "
            "engines dropped their environment (an srun --export list in --launcher-args, or a "
            "container or wrapper that starts from a clean environment); waiting longer will not help"
        )
    elif isinstance(error, TimeoutError):
        told = "see the launcher's output below" if output else "the launcher printed nothing"
        if not (ready or output):  # nothing else explains it
            told += " (if they are still starting, raise --timeout)"
        reason = f"{ready} of {plan.n} engines registered within {timeout} s; {told}"
    elif isinstance(error, EngineError):
        reason = f"the {plan.launcher} launcher exited before all engines registered"
    else:
        reason = f"{type(error).__name__}: {error}"
    message = f"Starting {plan.n} {plan.launcher} engines failed: {reason}. Everything started was stopped."
    return "\n".join([message, *output.splitlines()[-40:]])
