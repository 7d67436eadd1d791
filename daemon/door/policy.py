"""The door's policy: when a visit's evidence grants or refuses entry. Pure logic, no side effects.

The door decides on the visit (door/visit.py), not on windows: the voiced audio since the last
pause, embedded in one pass. It grants the first time that embedding's best voice is an
authorised name, clears the door threshold (and the margin over the runner-up) with at least
``min_voiced_s`` of voice heard; a visit that ends without a grant is refused once, on its final
evidence. `spkrec calibrate` asks ``grantable`` of the same events, so the stored threshold and
the live door agree on every rule: voiced seconds, margin, the visit's bounds.
"""

from __future__ import annotations

from typing import Callable

from spkrec.daemon.door.config import DoorConfig
from spkrec.daemon.pipeline.events import DoorEvent, Event, VisitEvent
from spkrec.models.scoring import UNKNOWN

NEVER = float("-inf")


class DoorPolicy:
    """``threshold`` is asked at every decision: a new calibration reaches a running door."""

    def __init__(self, cfg: DoorConfig, threshold: Callable[[], float], margin: float = 0.0) -> None:
        self.cfg, self.threshold, self.margin = cfg, threshold, margin
        self.open_until = float("-inf")  # stream time before which the door will not open again
        self.attempt = -1
        self.granted = False  # this visit has opened the door
        self.scores: list[float] = []  # this visit's evidence, for the record

    def grantable(self, event: VisitEvent) -> float:
        """The highest threshold at which this evidence opens the door; ``NEVER`` when none would
        (a voice not authorised, too little voice, a runner-up too close)."""
        if event.label == UNKNOWN or event.label not in self.cfg.authorized:
            return NEVER
        if event.voiced_s < self.cfg.min_voiced_s or event.score - event.runner_up < self.margin:
            return NEVER
        return event.score

    def observe(self, event: Event) -> DoorEvent | None:
        if not isinstance(event, VisitEvent):
            return None
        if event.attempt != self.attempt:
            self.attempt, self.granted, self.scores = event.attempt, False, []
        self.scores.append(event.score)
        threshold = self.threshold()
        if not self.granted and self.grantable(event) >= threshold and event.end >= self.open_until:
            self.granted = True
            self.open_until = event.end + self.cfg.cooldown_s
            return DoorEvent(event.label, True, event.score, "authorised", event.start, event.end,
                             tuple(self.scores), self.open_until, stream=event.stream, demo=event.demo)
        if not event.final or self.granted or event.voiced_s < self.cfg.min_voiced_s:
            return None
        if event.end < self.open_until and self.grantable(event) >= threshold:
            return None  # the door is open already for this voice (cooldown): nothing to refuse
        known = event.score >= threshold
        label = event.label if known else UNKNOWN
        reason = "unknown voice" if not known else "not authorised" if label not in self.cfg.authorized else \
            "too close to another voice"
        return DoorEvent(label, False, event.score, reason, event.start, event.end, tuple(self.scores),
                         stream=event.stream, demo=event.demo)
