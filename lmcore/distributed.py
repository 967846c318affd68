"""Training past one process: torchrun and DistributedDataParallel, set up from the environment.

``torchrun --standalone --nproc_per_node=N -m lmcore train ...`` starts N
processes and tells each one its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``
(and where to meet) through environment variables. ``init_from_env`` reads
them, joins the process group (NCCL on CUDA, gloo on CPU) and picks this
rank's device: ``cuda:LOCAL_RANK`` on GPUs, the CPU otherwise. Without those
variables it does nothing and the run is the ordinary single process.

The Trainer wraps its model in ``DistributedDataParallel`` when the group has
more than one process (``world()``); rank 0 alone evaluates, logs, prints and
saves (``is_main()``).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmcore.device import resolve_device
from lmcore.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up and choose this rank's device; single process otherwise."""
    if not launched_by_torchrun():
        return DistInfo(0, 0, 1, resolve_device(device))
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        world_size = int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ConfigError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers; start the run with torchrun") from None
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "lower --nproc_per_node to the number of GPUs"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    elif chosen.type == "mps":
        raise ConfigError("torchrun does not support Apple MPS; use --device cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo", device_id=chosen if chosen.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, chosen)


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process does the I/O: rank 0, or the only process."""
    return world()[0] == 0


def shutdown() -> None:
    """Leave the process group, if this process joined one.

    The group goes only once nothing holds it: DistributedDataParallel's wrapper
    (and the gloo work it keeps) sits in reference cycles that outlive the run, so
    they are collected first. Left to the interpreter's exit, gloo's threads were
    torn down after Python's and aborted the process at times ("terminate called
    without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
