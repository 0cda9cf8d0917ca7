"""Data-parallel pretraining under ``torchrun``: process group, rank roles, gathers that keep gradients.

``torchrun --nproc_per_node N cli.py pretrain ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
each process trains on its own shard of every global batch, NT-Xent sees the projections of all
ranks as negatives, and only rank 0 writes to the run store and the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size`` 1: no distribution)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes to the store and the checkpoint."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world() -> World:
    """The world ``torchrun`` describes in the environment (a single process when it does not)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world() -> World:
    """Join the process group when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs); idempotent."""
    world = env_world()
    if world.distributed and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return current_world()


def leave_world() -> None:
    """Wait for every rank, then leave the process group. Without it a rank that exits while gloo's
    background threads still run can die with "terminate called without an active exception"."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def current_world() -> World:
    """The world of the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def device_for(world: World) -> torch.device:
    """Each rank's GPU (``LOCAL_RANK``) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``z`` ``(n, D)`` stacked in rank order ``(world * n, D)``, and where this rank's rows start.

    ``torch.distributed.nn.functional.all_gather`` sends gradients back to the rank each row came
    from, so every rank's encoder learns from the negatives it contributed to the other ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private module; still the public autograd gather
        warnings.filterwarnings("ignore", category=FutureWarning)
        parts = all_gather(z.contiguous())
    return torch.cat(parts), dist.get_rank() * z.shape[0]


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks of a small float tensor (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (so all ranks stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class FollowerStore:
    """The run store as ranks other than 0 see it: reads go through, writes are dropped."""

    _WRITES = frozenset({
        "start_run", "update_run", "log_params", "log_split", "save_manifest", "log_metrics", "heartbeat",
        "truncate_metrics", "reopen_run", "log_result",
    })

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in self._WRITES:
            return lambda *a, **k: True if name == "reopen_run" else None
        if name == "track":
            return lambda *a, **k: contextlib.nullcontext()
        return getattr(self._store, name)
