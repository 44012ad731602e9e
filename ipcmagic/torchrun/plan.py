"""``%%torchrun``'s plans (pure): the argv and environment that run a cell's ranks, standalone or as
one srun step."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from IPython.core.error import UsageError

from ..base.containers import kept_activation, without_container
from ..base.gpus import device_sets, visible_devices
from ..base.slurm import BLOCK, Allocation, step_env
from . import rank as rank_side
from . import standalone
from .rank import CELL_VAR

LAUNCHERS = ("auto", "standalone", "srun")

#: variables a launcher sets per rank; inherited from the kernel they mislead torch and accelerate
DISTRIBUTED_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)

_TASK_ENV = (
    "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS "
    'LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE; exec "$@"'
)
#: marks the launcher and the ranks of one run (and their children) for :mod:`ipcmagic.base.watchdog`
MARKER_VAR = "IPCMAGIC_TORCHRUN"
#: the largest cell passed in the environment (Linux refuses a single string over 128 KiB)
MAX_CELL_BYTES = 120_000
#: what every rank runs: ``python -c`` this (:mod:`ipcmagic.torchrun.rank`)
RANK_PROGRAM = ["-c", Path(rank_side.__file__).read_text()]
#: what the standalone launcher runs: ``python -c`` this (:mod:`ipcmagic.torchrun.standalone`)
STANDALONE_PROGRAM = ["-c", Path(standalone.__file__).read_text()]


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without inherited per-rank variables (RANK, MASTER_ADDR, TORCHELASTIC_*, ...)."""
    return {k: v for k, v in env.items() if k not in DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC_")}


def pop_distributed_env() -> dict[str, str]:
    """Remove per-rank variables from this kernel's ``os.environ`` and return what was removed.

    For ``accelerate.notebook_launcher`` or ``transformers.Trainer`` in a container that sets
    ``RANK``/``LOCAL_RANK`` for the kernel: call it once before them.
    """
    removed = {k: os.environ[k] for k in os.environ.keys() - clean_env(os.environ).keys()}
    for name in removed:
        del os.environ[name]
    return removed


def free_port() -> int:
    """A TCP port that is free now on this host."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class TorchrunPlan:
    """What will run: the argv, the complete environment, how many ranks that starts, and the
    launcher's name (torchrun, srun)."""

    argv: list[str]
    env: dict[str, str]
    ranks: int
    launcher: str


def cell_program(code: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Python arguments and environment that run ``code`` as a script with ``args`` on a rank."""
    if "\0" in code:
        raise UsageError("The cell contains a null byte, which cannot reach the ranks; remove it.")
    size = len(code.encode())
    if size > MAX_CELL_BYTES:
        raise UsageError(
            f"The cell has {size // 1000} kB, more than %%torchrun passes to the ranks "
            f"({MAX_CELL_BYTES // 1000} kB); save it as a file and run %torchrun [options] file.py."
        )
    # bytes: the kernel's locale may have no encoding for the cell (LC_ALL=C with PYTHONUTF8=0)
    return [*RANK_PROGRAM, *args], {CELL_VAR: code.encode()}


def streamed(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for ranks whose output the kernel shows as it comes: unbuffered, and UTF-8 (what the
    kernel reads) unless the user chose an encoding, also where the locale has none (LC_ALL=C)."""
    return {"PYTHONIOENCODING": "utf-8", **env, "PYTHONUNBUFFERED": "1"}


def rank_count(allocation: Allocation | None, nproc: int | str | None, nnodes: int) -> tuple[int, str]:
    """Ranks per node, and why where no number chose them: ``gpu``, and by default where the
    nodes have GPUs, one per GPU of a node (the fewest any of the ``nnodes`` nodes has); else 1,
    as torchrun. ``allocation`` None: this machine's GPUs."""
    if isinstance(nproc, int):
        return nproc, ""
    if nproc not in (None, "gpu"):
        raise UsageError(f"-n takes a number of ranks per node or 'gpu' (one per GPU), not {nproc!r}.")
    if allocation is None:
        gpus, where = len(visible_devices()), "this node"
    else:
        gpus = min(list(allocation.gpus_per_node().values())[:nnodes])
        where = "each node" if nnodes > 1 else "this job's node"
    if gpus:
        return gpus, f"one per GPU of {where}"
    if nproc == "gpu":
        raise UsageError(f"-n gpu starts one rank per GPU, but {where} has none; give -n a number.")
    return 1, ""


def plan_standalone(
    python: str, nproc: int, program: list[str], port: int, env: Mapping[str, str], *, gpus_per_rank: int = 0
) -> TorchrunPlan:
    """ipcmagic's standalone launcher (:mod:`ipcmagic.torchrun.standalone`) on this node, the world's store
    on ``port``; each rank runs ``python *program``, with its own ``gpus_per_rank`` GPUs if given."""
    argv = [python, *STANDALONE_PROGRAM, str(nproc), python, *program]
    task_env = {**streamed(clean_env(env)), "MASTER_PORT": str(port)}
    if gpus_per_rank:
        seen = env["CUDA_VISIBLE_DEVICES"].split(",") if env.get("CUDA_VISIBLE_DEVICES") else None
        try:
            sets = device_sets(seen, nproc, gpus_per_rank, socket.gethostname())
        except ValueError as e:
            raise UsageError(str(e).replace("engines", "ranks").replace("-engine", "-rank")) from None
        task_env[standalone.RANK_GPUS_VAR] = ";".join(sets)
    return TorchrunPlan(argv, task_env, nproc, "ipcmagic")


def plan_srun(
    python: str,
    nproc: int,
    nnodes: int,
    program: list[str],
    allocation: Allocation,
    port: int,
    env: Mapping[str, str],
    *,
    name: str,
    srun_args: list[str] = (),
    environment: str = "",
    container_workdir: str = "",
    gpus_per_rank: int = 0,
) -> TorchrunPlan:
    """One ``srun --overlap`` step on the allocation's first ``nnodes`` nodes, env:// for torch;
    each rank runs ``python *program`` with an equal share of its node's CPUs, and its own
    ``gpus_per_rank`` GPUs if given (else it sees all of its node's)."""
    nodes = allocation.nodes[:nnodes]
    share = max(1, min(allocation.node_cpus()[node] for node in nodes) // nproc)
    # --quit-on-interrupt: one SIGINT reaches every rank (plain srun only prints a status), then the step ends
    argv = [
        "srun",
        "--overlap",
        "--label",
        "--quit-on-interrupt",
        "--kill-on-bad-exit=1",
        f"--job-name={name}",
        f"--nodes={nnodes}",
        f"--ntasks={nproc * nnodes}",
        f"--ntasks-per-node={nproc}",
        f"--cpus-per-task={share}",
        BLOCK,
        f"--nodelist={','.join(nodes)}",
    ]
    if environment:
        argv.append(f"--environment={environment}")
    if container_workdir:
        argv.append(f"--container-workdir={container_workdir}")
    if gpus_per_rank:
        argv.append(f"--gpus-per-task={gpus_per_rank}")
    argv += [*srun_args, "bash", "-c", _TASK_ENV, "torchrun-task", python, *program]
    # a container of the step's own replaces the kernel's (whose venv is not in it)
    env = without_container(env) if environment else {**env, **kept_activation(env)}
    task_env = {**streamed(step_env(clean_env(env))), "MASTER_ADDR": nodes[0], "MASTER_PORT": str(port)}
    return TorchrunPlan(argv, task_env, nproc * nnodes, "srun")
