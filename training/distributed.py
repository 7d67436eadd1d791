"""torchrun awareness: which process this is, the process group, and the few collectives training needs.

``spkrec train`` run plainly is one process; run under ``torchrun`` (which sets RANK,
WORLD_SIZE and LOCAL_RANK) it joins a process group — NCCL between GPUs, gloo on CPUs — and
the loop wraps the network in DistributedDataParallel. Nothing else in the command changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from spkrec.models.errors import DataError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        """The one process that prints, writes checkpoints and exports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return bool(self.backend)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def join(device_name: str) -> Group:
    """Join torchrun's process group when launched by it; otherwise a group of one, no backend."""
    if not launched_by_torchrun():
        return Group()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise DataError(f"torchrun started {local + 1}+ processes on a node with "
                            f"{torch.cuda.device_count()} GPU(s): use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    # Rank 0 exports alone at the end while the others wait; a generous timeout keeps them.
    dist.init_process_group(backend, timeout=timedelta(minutes=60))
    return Group(rank, world, local, backend)


def device_for(group: Group, base: torch.device) -> torch.device:
    """Each rank drives the GPU of its local rank."""
    if base.type == "cuda" and group.active:
        return torch.device("cuda", group.local_rank)
    return base


def barrier(group: Group) -> None:
    if group.active:
        dist.barrier()


def total(values: list[float], group: Group, device: torch.device) -> list[float]:
    """Sum of each value over all ranks (for the epoch's loss, accuracy and throughput)."""
    if not group.active:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device if group.backend == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()
