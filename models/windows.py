"""Cutting a recording into the fixed-length windows a model scores.

Training crops, evaluation, identification and enrollment all window audio the same way,
so a file-level score means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Repeat a short recording until it fills ``length`` samples.

    Repetition keeps the spectrum speech-like, where zero padding would teach the model
    that silence is part of a voice.
    """
    if samples.size >= length:
        return samples[:length]
    if samples.size == 0:
        return np.zeros(length, dtype=np.float32)
    reps = int(np.ceil(length / samples.size))
    return np.tile(samples, reps)[:length]


def frame_windows(samples: np.ndarray, window: int, hop: int) -> np.ndarray:
    """All windows of ``window`` samples every ``hop`` samples, as a [n, window] array.

    A recording shorter than one window yields one repeated window; the tail that does not
    fill a whole hop is covered by a last window aligned to the end.
    """
    if samples.size <= window:
        return fit_length(samples, window)[None, :]
    starts = list(range(0, samples.size - window + 1, hop))
    if starts[-1] + window < samples.size:
        starts.append(samples.size - window)
    return np.stack([samples[s : s + window] for s in starts]).astype(np.float32, copy=False)
