"""Turns finer than a window: window scores spread onto short frames, frames joined into turns.

A 2-s window that straddles a change of speaker scores between the two voices. Each 0.1-s frame
takes the mean of the scores of every window covering it, so at a change the frames flip where
the windows covering them tip from one voice to the other: the boundary lands within a frame or
two of where the voice changed, not on a window's edge. Frames the VAD found silent belong to
nobody.

Used offline over a whole recording and live over the frames whose windows have all arrived,
with the same ``TurnBuilder``, so the two differ only in the centroids they score against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .scoring import normalize

FRAME_S = 0.1


@dataclass(frozen=True)
class WindowRecord:
    """What turn-making needs of one scored window: where it lies, where it was voiced, its embedding."""

    start: float
    end: float
    voiced_spans: tuple[tuple[float, float], ...]
    embedding: np.ndarray


@dataclass(frozen=True)
class Frame:
    start: float
    speaker: int  # index into the centroids; -1: silence or no window to say


def frames(windows: Sequence[WindowRecord], centroids: np.ndarray, t0: float, t1: float) -> list[Frame]:
    """The frames starting in [t0, t1), each labelled by the windows covering it."""
    first, last = int(round(t0 / FRAME_S)), int(round(t1 / FRAME_S))
    n = max(last - first, 0)
    if n == 0:
        return []
    total = np.zeros((n, len(centroids)))
    count = np.zeros(n)
    voiced = np.zeros(n, bool)
    if len(windows) and len(centroids):
        scores = normalize(np.stack([w.embedding for w in windows])) @ normalize(centroids).T
        for w, row in zip(windows, scores):
            a, b = _span(w.start, w.end, first, n)
            total[a:b] += row
            count[a:b] += 1
            for vs, ve in w.voiced_spans:
                va, vb = _span(vs, ve, first, n)
                voiced[va:vb] = True
    best = np.where(voiced & (count > 0), np.argmax(total, axis=1), -1) if len(centroids) else np.full(n, -1)
    return [Frame((first + i) * FRAME_S, int(k)) for i, k in enumerate(best)]


def _span(start: float, end: float, first: int, n: int) -> tuple[int, int]:
    a = int(round(start / FRAME_S)) - first
    b = int(round(end / FRAME_S)) - first
    return max(a, 0), min(max(b, 0), n)


@dataclass
class Turn:
    start: float
    end: float
    speaker: int


class TurnBuilder:
    """Frames in time order -> turns, emitted as they close.

    A turn goes on through pauses up to ``max_pause_s`` (a speaker drawing breath) and closes
    at a longer pause or once another voice has held ``min_turn_s`` of frames; a shorter run of
    another voice inside it is not a turn of its own (a blip of a mixed window). Turns shorter
    than ``min_turn_s`` are dropped.
    """

    def __init__(self, max_pause_s: float, min_turn_s: float, emit: Callable[[Turn], None]) -> None:
        self.max_pause_s, self.min_turn_s, self.emit = max_pause_s, min_turn_s, emit
        self.open: Turn | None = None
        self.challenger: Turn | None = None  # another voice's run, not yet long enough to take over

    def push(self, frame: Frame) -> None:
        t = frame.start
        if self.open is not None and t - self.open.end > self.max_pause_s:
            pending = self.challenger  # another voice already speaking when the pause ran out
            self._close()
            self.open = pending
        if frame.speaker < 0:
            return
        if self.open is None:
            self.open = Turn(t, t + FRAME_S, frame.speaker)
        elif frame.speaker == self.open.speaker:
            self.open.end = t + FRAME_S
            self.challenger = None
        else:
            if self.challenger is None or self.challenger.speaker != frame.speaker or \
                    t - self.challenger.end > self.max_pause_s:
                self.challenger = Turn(t, t, frame.speaker)
            self.challenger.end = t + FRAME_S
            if self.challenger.end - self.challenger.start >= self.min_turn_s:
                taking_over = self.challenger
                self.open.end = min(self.open.end, taking_over.start)
                self._close()
                self.open = taking_over

    def _close(self) -> None:
        turn, self.open, self.challenger = self.open, None, None
        if turn is not None and turn.end - turn.start >= self.min_turn_s:
            self.emit(turn)

    def finish(self) -> None:
        self._close()
