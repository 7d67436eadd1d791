"""From window embeddings to labels: cosine scores, smoothing, open-set "unknown", silence.

Scores are averaged over the last few voiced windows before deciding, so one odd window
does not flip the label; a silent window resets that memory, so a new turn starts fresh.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from spkrec.daemon.pipeline.events import SilenceEvent, SpeakerEvent
from spkrec.daemon.pipeline.windowing import VoicedTail, Window
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
    def __init__(self, roster: Roster, settings: DeciderSettings, point: Callable[[], float] | None = None) -> None:
        """``point``, when given, is asked for the threshold at each decision (a calibration that
        reaches a running daemon, roster.LivePoint); else ``settings.threshold`` holds."""
        self.roster, self.settings, self.point = roster, settings, point
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
        threshold = self.point() if self.point is not None else self.settings.threshold
        decision: Decision = decide(smoothed, labels, threshold, self.settings.margin)
        self.speaking = True
        return SpeakerEvent(window.start, window.end, decision.label, decision.score, decision.candidates,
                            window.voiced_ratio, inference_ms, latency_ms, window.voiced_span(),
                            voiced_spans=window.voiced_spans())



class TurnDecider(Decider):
    """Labels from the turn's accumulated audio; windows only say when the speaker changes.

    The window decider's label (smoothed, as above) marks a change of speaker once it disagrees
    with the turn's for ``change_windows`` windows in a row, or at a pause. Inside a turn, each
    window's new voiced audio joins the turn's (its last ``keep_s`` seconds), embedded in one pass
    every ``every_s`` seconds of new voice and held to the threshold for whole utterances
    (``turn_point``): once the turn has its first one-pass label, every window of the turn says it.
    """

    def __init__(self, roster: Roster, settings: DeciderSettings, point: Callable[[], float] | None,
                 embed: Callable[[np.ndarray], np.ndarray], turn_point: Callable[[], float], rate: int, hop_s: float,
                 every_s: float = 1.0, keep_s: float = 8.0, change_windows: int = 1) -> None:
        super().__init__(roster, settings, point)
        self.embed, self.turn_point = embed, turn_point
        self.tail = VoicedTail(int(round(hop_s * rate)), int(round(keep_s * rate)), int(round(every_s * rate)))
        self.change_windows = change_windows
        self._new_turn()

    def _new_turn(self) -> None:
        self.tail.reset()
        self.turn: Decision | None = None  # the turn's one-pass decision, once it has one
        self.disagree = 0  # windows in a row whose label is not the turn's

    def silence(self, window: Window) -> SilenceEvent | None:
        self._new_turn()
        return super().silence(window)

    def decide(self, window: Window, embedding: np.ndarray, inference_ms: float, latency_ms: float) -> SpeakerEvent:
        event = super().decide(window, embedding, inference_ms, latency_ms)
        if self.turn is not None:
            self.disagree = self.disagree + 1 if event.label != self.turn.label else 0
            if self.disagree >= self.change_windows:  # another voice: its turn starts with this window
                self._new_turn()
        self.tail.add(window)
        if self.tail.due():
            labels, prototypes = self.roster()
            self.turn = decide(cosine_scores(self.embed(self.tail.audio), prototypes), labels, self.turn_point(),
                               self.settings.margin)
            self.tail.mark()
            self.disagree = 0
        if self.turn is None:
            return event
        return dataclasses.replace(event, label=self.turn.label, score=self.turn.score, candidates=self.turn.candidates)
