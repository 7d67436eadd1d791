"""A door visit's evidence: the voiced audio since the last pause, embedded in one pass as it grows.

A window of two seconds says little about a voice; a visit of several says much more, and the
model embeds it in one pass (models/utterance.py). Each window's new voiced audio joins the
visit; every ``every_s`` seconds of new voice the last ``visit_s`` seconds are embedded and
scored against every voice, as a ``VisitEvent`` the door's policy decides on. A quiet window
(a pause) ends the visit, and so does ``max_visit_s`` of stream time: each is one attempt, with
a last, ``final`` event. `spkrec calibrate` replays recordings through this same class, in the
same pipeline, so the threshold it stores is measured on exactly what the door sees.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from spkrec.daemon.pipeline.decisions import Roster
from spkrec.daemon.pipeline.events import Event, VisitEvent
from spkrec.daemon.pipeline.windowing import VoicedTail, Window
from spkrec.models.scoring import UNKNOWN, cosine_scores

Embed = Callable[[np.ndarray], np.ndarray]  # voiced audio -> [D] unit embedding, in one pass


class VisitTracker:
    """A pipeline stage for a door's stream: windows in, visit events out."""

    def __init__(self, roster: Roster, rate: int, hop_s: float, visit_s: float, every_s: float,
                 max_visit_s: float) -> None:
        self.roster, self.rate = roster, rate
        self.tail = VoicedTail(int(round(hop_s * rate)), int(round(visit_s * rate)), int(round(every_s * rate)))
        self.max_visit_s = max_visit_s
        self.attempt = 0
        self._reset()

    def _reset(self) -> None:
        self.tail.reset()
        self.start: float | None = None
        self.until = 0.0  # stream time of the visit's last window
        self.last: VisitEvent | None = None

    def window(self, window: Window, embed: Embed) -> list[Event]:
        """A voiced window: its new voiced audio joins the visit, scored when enough has come."""
        if self.start is None:
            self.start, self.attempt = window.start, self.attempt + 1
        self.tail.add(window)
        self.until = window.end
        events: list[Event] = []
        if self.tail.due():
            events.append(self._score(window.end, embed))
        if window.end - self.start >= self.max_visit_s:
            events += self._finish(window.end, embed)
        return events

    def quiet(self, window: Window, embed: Embed) -> list[Event]:
        """A pause: the visit, if one is open, says its last word."""
        return self._finish(window.start + (window.end - window.start) / 2, embed) if self.start is not None else []

    def end(self, embed: Embed) -> list[Event]:
        """The stream ended (a file's last sample, a stopped daemon): an open visit says its last word."""
        return self._finish(self.until, embed) if self.start is not None else []

    def _finish(self, end: float, embed: Embed) -> list[Event]:
        if self.tail.voiced > self.tail.marked or self.last is None:
            final = self._score(end, embed, final=True) if self.tail.voiced else None
        else:
            final = dataclasses.replace(self.last, final=True)
        self._reset()
        return [final] if final is not None else []

    def _score(self, end: float, embed: Embed, final: bool = False) -> VisitEvent:
        labels, prints = self.roster()
        scores = cosine_scores(embed(self.tail.audio), prints) if len(labels) else np.zeros(0)
        order = np.argsort(-scores)
        label, score = (labels[order[0]], float(scores[order[0]])) if len(order) else (UNKNOWN, -1.0)
        runner_up = float(scores[order[1]]) if len(order) > 1 else -1.0
        self.tail.mark()
        self.last = VisitEvent(self.start, end, label, score, runner_up, self.tail.voiced / self.rate, final,
                               self.attempt)
        return self.last
