"""``%%torchrun``: a cell, a script or a function run as a distributed PyTorch job, standalone or as
one srun step: :mod:`.plan` builds the argv and environment (pure), :mod:`.run` runs them,
:mod:`.jobs` holds the defaults and moves values in and out through :mod:`.exchange`;
:mod:`.rank` and :mod:`.standalone` are the programs the ranks and the launcher run."""

from .jobs import RankError, Torchrun, launch
from .plan import LAUNCHERS, pop_distributed_env
from .run import NodeLost, TorchrunError, TorchrunInterrupted

__all__ = [
    "LAUNCHERS",
    "NodeLost",
    "RankError",
    "Torchrun",
    "TorchrunError",
    "TorchrunInterrupted",
    "launch",
    "pop_distributed_env",
]
