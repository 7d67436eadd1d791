"""From window embeddings to labels: cosine scores, smoothing, open-set "unknown", silence.

Scores are averaged over the last few voiced windows before deciding, so one odd window
does not flip the label; a silent window resets that memory, so a new turn starts fresh.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from spkrec.daemon.pipeline.events import SilenceEvent, SpeakerEvent
from spkrec.daemon.pipeline.windowing import Window
from spkrec.models.scoring import Decision, cosine_scores, decide

# (labels, prototypes): who can be recognised right now. A callable, so that speakers
# enrolled while the daemon runs are picked up without a restart.
Roster = Callable[[], tuple[tuple[str, ...], np.ndarray]]


@dataclass
class DeciderSettings:
    threshold: float
    margin: float
    smoothing: int
    min_voiced_ratio: float


class Decider:
    def __init__(self, roster: Roster, settings: DeciderSettings) -> None:
        self.roster, self.settings = roster, settings
        self.history: deque[np.ndarray] = deque(maxlen=settings.smoothing)
        self.history_labels: tuple[str, ...] = ()
        self.speaking = False

    def needs_embedding(self, window: Window) -> bool:
        return window.voiced_ratio >= self.settings.min_voiced_ratio

    def silence(self, window: Window) -> SilenceEvent | None:
        """A window without enough voice: the first one after speech is a silence event."""
        self.history.clear()
        if not self.speaking:
            return None
        self.speaking = False
        return SilenceEvent(window.start, window.end)

    def decide(self, window: Window, embedding: np.ndarray, inference_ms: float, latency_ms: float) -> SpeakerEvent:
        labels, prototypes = self.roster()
        if labels != self.history_labels:  # the roster changed: old score rows no longer line up
            self.history.clear()
            self.history_labels = labels
        self.history.append(cosine_scores(embedding, prototypes))
        smoothed = np.mean(self.history, axis=0)
        decision: Decision = decide(smoothed, labels, self.settings.threshold, self.settings.margin)
        self.speaking = True
        return SpeakerEvent(window.start, window.end, decision.label, decision.score, decision.candidates,
                            window.voiced_ratio, inference_ms, latency_ms, window.voiced_span(),
                            voiced_spans=window.voiced_spans())

