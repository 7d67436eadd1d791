"""Feeding the training loop: crop batches assembled in DataLoader workers, pinned for the GPU.

The decoded audio stays in the parent process (memory-mapped from the decode cache, so worker
processes and DDP ranks share one copy through the page cache); a worker only slices crops
and stacks them, which keeps a GPU busy without re-decoding anything.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spkrec.models.windows import fit_length

from . import data as datasets


class CropBatches(Dataset):
    """Item i is the i-th (waveforms [B, window], labels [B]) batch of one epoch, for one rank."""

    def __init__(self, clips: list[datasets.Clip], batches: list[list[tuple[int, int]]], window: int,
                 label_index: dict[str, int]) -> None:
        self.clips, self.batches, self.window = clips, batches, window
        self.labels = np.array([label_index[c.label] for c in clips], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batches[i]
        x = np.stack([fit_length(np.asarray(self.clips[c].samples[o : o + self.window]), self.window) for c, o in batch])
        y = self.labels[[c for c, _ in batch]]
        return torch.from_numpy(x), torch.from_numpy(y)


def auto_workers(requested: int, device: torch.device, world_size: int) -> int:
    """``train.workers`` or, at -1, a share of this machine's CPUs on CUDA and none on CPU.

    On a CPU run the training step itself wants every core; a crop is a memory copy, so a
    worker would only compete with it.
    """
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // max(1, world_size) - 1))


def batch_loader(clips: list[datasets.Clip], batches: list[list[tuple[int, int]]], window: int,
                 label_index: dict[str, int], workers: int, device: torch.device) -> DataLoader:
    """One epoch's batches, prepared ahead by ``workers`` processes (0 = in this process)."""
    return DataLoader(CropBatches(clips, batches, window, label_index), batch_size=None, shuffle=False,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, multiprocessing_context=_context(workers))


def _context(workers: int):
    """Fork where the platform has it: workers then share the parent's decoded audio instead of
    receiving a pickled copy each (newer Pythons default to forkserver)."""
    if workers and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None
