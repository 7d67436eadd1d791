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


class RunBatches(Dataset):
    """Item k is step k of the run (from ``first_epoch`` on): this rank's share of that step's
    seeded global batch, as waveforms [b, window] and labels [b].

    One dataset spans every epoch, so one DataLoader — and one set of worker processes — serves
    the whole run: workers started per epoch cost seconds that a short epoch on a fast GPU notices.
    Each worker recomputes an epoch's batch plan from (seed, epoch) when it first needs it.
    """

    def __init__(self, clips: list[datasets.Clip], window: int, batch_size: int, seed: int,
                 label_index: dict[str, int], first_epoch: int, epochs: int, rank: int = 0, world_size: int = 1) -> None:
        self.clips, self.window, self.batch_size, self.seed = clips, window, batch_size, seed
        self.first_epoch, self.epochs, self.rank, self.world_size = first_epoch, epochs, rank, world_size
        self.per_epoch = datasets.steps_per_epoch(clips, window, batch_size)
        self.labels = np.array([label_index[c.label] for c in clips], dtype=np.int64)
        self._plan: tuple[int, list] = (-1, [])

    def __len__(self) -> int:
        return max(0, self.epochs - self.first_epoch) * self.per_epoch

    def _batch(self, k: int) -> list[tuple[int, int]]:
        epoch, index = divmod(k, self.per_epoch)
        epoch += self.first_epoch
        if self._plan[0] != epoch:
            self._plan = (epoch, list(datasets.epoch_batches(self.clips, self.window, self.batch_size, self.seed, epoch)))
        return self._plan[1][index][self.rank :: self.world_size]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._batch(k)
        x = np.stack([fit_length(np.asarray(self.clips[c].samples[o : o + self.window]), self.window) for c, o in batch])
        return torch.from_numpy(x), torch.from_numpy(self.labels[[c for c, _ in batch]])


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


def batch_loader(batches: RunBatches, workers: int, device: torch.device) -> DataLoader:
    """The run's batches, prepared ahead by ``workers`` processes (0 = in this process)."""
    # Its own generator: starting an iterator draws a seed, which must not shift the global stream
    # that initialisation and SpecAugment use (a run is then the same with or without this loader).
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                      multiprocessing_context=_context(workers),
                      generator=torch.Generator().manual_seed(batches.seed))


def _context(workers: int):
    """Fork where the platform has it: workers then share the parent's decoded audio instead of
    receiving a pickled copy each (newer Pythons default to forkserver)."""
    if workers and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None
