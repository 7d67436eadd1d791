"""Give freed heap memory back to the operating system, so a long-running daemon's RSS stays flat.

Without ONNX Runtime's arena (models.engine) every batch allocates its activations with
``malloc`` and frees them afterwards, but glibc keeps freed memory inside its heaps: a load
spike that batches more windows than usual leaves RSS a step higher for good (a 30-minute soak
stepped 184 -> 197 MB at minute 8 and never came back). ``malloc_trim(0)`` hands every free
page of every heap back (``madvise``), in 2-10 ms a call on this model's heap. Calling it every
few seconds from the pipeline loop keeps RSS at what is really in use; fixing the mmap threshold
instead was slower (18 % per window, paced as a daemon), and ``M_ARENA_MAX`` did not stop the
steps (tests/benchmarks/heap_bench.py; README, "CPU: static int8, memory and start-up").
Not glibc (musl, macOS): nothing to do, and nothing is done.
"""

from __future__ import annotations

import ctypes
import math
import time
from typing import Callable

TRIM_EVERY_S = 10.0  # a trim costs 2-10 ms of the pipeline thread; every 10 s that is under 0.1 %


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none. Looked up among the
    symbols the process already has (dlopen(NULL)): no search for the library at start-up."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """Trims the heap at most every ``interval_s``; ``tick`` runs on the pipeline thread at
    every pass of its loop, so a trim never races the engine call it would undo. The first tick
    trims at once: start-up (loading the model, building its int8 copy) frees far more than a
    batch, and a service should not sit on it."""

    def __init__(self, interval_s: float = TRIM_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = interval_s, clock
        self._trim = _malloc_trim()
        self.last = -math.inf
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def tick(self) -> None:
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            self.trim()

    def trim(self) -> None:
        if self._trim is not None:
            self._trim(0)
            self.trims += 1
