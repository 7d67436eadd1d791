"""The door's policy: when a stream's decisions grant or refuse entry. Pure logic, no side effects."""

from __future__ import annotations

from collections import Counter, deque

from spkrec.daemon.door.config import DoorConfig
from spkrec.daemon.pipeline.events import DoorEvent, Event, SilenceEvent, SpeakerEvent
from spkrec.models.scoring import UNKNOWN


def voiced_seconds(events: list[SpeakerEvent]) -> float:
    """Voiced audio covered by these windows, each instant counted once although windows overlap."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(span for e in events for span in e.voiced_spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


class DoorPolicy:
    """N of the last M voiced windows, S voiced seconds, a cooldown: pure logic, no side effects."""

    def __init__(self, cfg: DoorConfig) -> None:
        self.cfg = cfg
        self.recent: deque[SpeakerEvent] = deque(maxlen=cfg.of_last)
        self.open_until = -1.0  # stream time before which the door stays as it is
        self.denied_label: str | None = None

    def observe(self, event: Event) -> DoorEvent | None:
        if isinstance(event, SilenceEvent):
            self.recent.clear()
            self.denied_label = None
            return None
        if not isinstance(event, SpeakerEvent):
            return None
        self.recent.append(event)
        label, wins = Counter(e.label for e in self.recent).most_common(1)[0]
        if wins < self.cfg.wins:
            return None
        winning = [e for e in self.recent if e.label == label]
        if voiced_seconds(winning) < self.cfg.min_voiced_s:
            return None
        scores = tuple(e.score for e in winning)
        if label in self.cfg.authorized and label != UNKNOWN:
            if event.end < self.open_until:
                return None
            self.open_until = event.end + self.cfg.cooldown_s
            return DoorEvent(label, True, min(scores), "authorised", winning[0].start, event.end, scores,
                             self.open_until, stream=event.stream, demo=event.demo)
        if label == self.denied_label:
            return None  # one denial per attempt, not one per window
        self.denied_label = label
        reason = "unknown voice" if label == UNKNOWN else "not authorised"
        return DoorEvent(label, False, max(scores), reason, winning[0].start, event.end, scores,
                         stream=event.stream, demo=event.demo)
