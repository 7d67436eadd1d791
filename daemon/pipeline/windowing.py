"""Sliding windows over VAD frames: every hop, the last window goes to the engine.

A fixed ring buffer holds the last window of audio and its voiced flags, so memory stays
flat for hours. Stream time (samples seen / rate) travels with every window, and audio that
never arrived (dropped blocks, a lost device) still counts, so stream time keeps pace with the
wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spkrec.daemon.pipeline.vad import Frame
from spkrec.models.windows import fit_length


@dataclass(frozen=True)
class Window:
    start: float  # stream seconds
    end: float
    samples: np.ndarray  # the whole window
    voiced_mask: np.ndarray  # per sample
    arrival: float  # monotonic time the last sample arrived

    @property
    def voiced_ratio(self) -> float:
        return float(self.voiced_mask.mean()) if self.voiced_mask.size else 0.0

    def voiced_span(self) -> tuple[float, float]:
        """Stream times of the first and last voiced sample: where speech starts and stops."""
        voiced = np.flatnonzero(self.voiced_mask)
        if not voiced.size:
            return self.end, self.end
        seconds = (self.end - self.start) / self.voiced_mask.size
        return self.start + voiced[0] * seconds, self.start + (voiced[-1] + 1) * seconds

    def voiced_spans(self) -> tuple[tuple[float, float], ...]:
        """Every voiced stretch in stream seconds: the door counts voiced audio from these, once
        per instant, although consecutive windows overlap."""
        edges = np.flatnonzero(np.diff(np.concatenate([[0], self.voiced_mask.astype(np.int8), [0]])))
        seconds = (self.end - self.start) / max(self.voiced_mask.size, 1)
        return tuple((self.start + float(a) * seconds, self.start + float(b) * seconds)
                     for a, b in zip(edges[::2], edges[1::2]))

    def voiced_audio(self) -> np.ndarray:
        """Only the voiced samples, repeated to the window length: pauses inside a window
        would otherwise dilute the voiceprint with silence."""
        voiced = self.samples[self.voiced_mask]
        return fit_length(voiced, self.samples.size) if voiced.size else self.samples


class Windower:
    def __init__(self, rate: int, window_s: float, hop_s: float) -> None:
        self.rate = rate
        self.window = int(round(window_s * rate))
        self.hop = int(round(hop_s * rate))
        self.audio = np.zeros(self.window, np.float32)
        self.voiced = np.zeros(self.window, bool)
        self.filled = 0  # samples seen in total
        self.next_due = self.window

    def push(self, frame: Frame, arrival: float) -> list[Window]:
        out = []
        for start in range(0, frame.samples.size, self.hop):  # frames are shorter than a hop in practice
            chunk = frame.samples[start : start + self.hop]
            n = chunk.size
            self.audio = np.roll(self.audio, -n)
            self.audio[-n:] = chunk
            self.voiced = np.roll(self.voiced, -n)
            self.voiced[-n:] = frame.voiced
            self.filled += n
            if self.filled >= self.next_due:
                out.append(Window((self.filled - self.window) / self.rate, self.filled / self.rate,
                                  self.audio.copy(), self.voiced.copy(), arrival))
                self.next_due += self.hop
        return out

    def skip(self, n: int, arrival: float) -> list[Window]:
        """Account for ``n`` samples that never arrived, as unvoiced silence.

        Stream time advances by the missing audio, so later windows (and RTTM, events) keep their
        true times. At most one window is returned however long the gap: the last one due, which
        is silence once the gap covers a whole window (so an open turn closes there), instead of
        a flood of empty windows for a device that was gone for minutes.
        """
        if n <= 0:
            return []
        k = min(n, self.window)
        self.audio = np.roll(self.audio, -k)
        self.audio[-k:] = 0.0
        self.voiced = np.roll(self.voiced, -k)
        self.voiced[-k:] = False
        self.filled += n
        if self.filled < self.next_due:
            return []
        out = [Window((self.filled - self.window) / self.rate, self.filled / self.rate, self.audio.copy(),
                      self.voiced.copy(), arrival)]
        self.next_due += ((self.filled - self.next_due) // self.hop + 1) * self.hop
        return out


class VoicedTail:
    """A stretch of voice as the windows bring it (a door's visit, a speaker's turn): the first
    window's voiced audio, then each later window's new hop of it; the last ``keep`` samples are
    kept, and ``due`` says when ``every`` new voiced samples have come since the last ``mark``."""

    def __init__(self, hop: int, keep: int, every: int) -> None:
        self.hop, self.keep, self.every = hop, keep, every
        self.reset()

    def reset(self) -> None:
        self.audio = np.zeros(0, np.float32)
        self.voiced = 0  # voiced samples heard since the reset
        self.marked = 0  # ``voiced`` at the last mark

    def add(self, window: Window) -> None:
        if self.voiced == 0:
            new = window.samples[window.voiced_mask]
        else:
            new = window.samples[-self.hop:][window.voiced_mask[-self.hop:]]
        self.audio = np.concatenate([self.audio, new])[-self.keep:]
        self.voiced += new.size

    def due(self) -> bool:
        return self.voiced - self.marked >= self.every

    def mark(self) -> None:
        self.marked = self.voiced
