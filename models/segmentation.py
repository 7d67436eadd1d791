"""Turns finer than a window: window scores spread onto short frames, frames joined into turns.

A 2-s window that straddles a change of speaker scores between the two voices. Each 0.1-s frame
takes the mean of the scores of every window covering it, so at a change the frames flip where
the windows covering them tip from one voice to the other: the boundary lands within a frame or
two of where the voice changed, not on a window's edge. Frames the VAD found silent belong to
nobody. A frame where a second speaker scores as well as a typical window of that speaker
(``Scales.window``) is marked as overlapped speech: two voices in the windows around it.

Used offline over a whole recording and live over the frames whose windows have all arrived,
with the same ``TurnBuilder``, so the two differ only in the centroids they score against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    second: int = -1  # a second voice heard here (overlap), else -1


def frames(windows: Sequence[WindowRecord], centroids: np.ndarray, t0: float, t1: float,
           overlap_threshold: float) -> list[Frame]:
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
    out = []
    for i in range(n):
        speaker = second = -1
        if voiced[i] and count[i]:
            mean = total[i] / count[i]
            order = np.argsort(-mean)
            speaker = int(order[0])
            if len(order) > 1 and mean[order[1]] >= overlap_threshold:
                second = int(order[1])
        out.append(Frame((first + i) * FRAME_S, speaker, second))
    return out


def _span(start: float, end: float, first: int, n: int) -> tuple[int, int]:
    a = int(round(start / FRAME_S)) - first
    b = int(round(end / FRAME_S)) - first
    return max(a, 0), min(max(b, 0), n)


@dataclass
class Turn:
    start: float
    end: float
    speaker: int
    overlaps: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, other speaker)


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
        if frame.second >= 0 and self.open is not None:
            self._overlap(t, frame.second if frame.second != self.open.speaker else frame.speaker)

    def _overlap(self, t: float, other: int) -> None:
        spans = self.open.overlaps
        if spans and spans[-1][2] == other and t - spans[-1][1] < FRAME_S / 2:
            spans[-1] = (spans[-1][0], t + FRAME_S, other)
        else:
            spans.append((t, t + FRAME_S, other))

    def _close(self) -> None:
        turn, self.open, self.challenger = self.open, None, None
        if turn is not None and turn.end - turn.start >= self.min_turn_s:
            turn.overlaps = [o for o in turn.overlaps if o[0] < turn.end]
            self.emit(turn)

    def finish(self) -> None:
        self._close()
