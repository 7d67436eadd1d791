"""The events the live pipeline emits: one documented, stable JSON schema for integrators.

Times are seconds of stream time (audio seen so far), never wall-clock, so a file replayed
with ``--fast`` and the same audio heard live give the same events.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


def tagged(event, data: dict) -> dict:
    """Add the stream's name when the daemon serves named streams, and ``"demo": true`` to every
    event of the demo stream, so no integrator can take a demo voice for a real visitor."""
    if event.stream:
        data["stream"] = event.stream
    if event.demo:
        data["demo"] = True
    return data


@dataclass(frozen=True)
class SpeakerEvent:
    """One scored window: who (after smoothing), how sure, and the runners-up."""

    start: float
    end: float
    label: str  # a speaker name or "unknown"
    score: float
    candidates: tuple[tuple[str, float], ...]
    voiced: float  # share of the window's VAD frames that were voiced
    inference_ms: float = 0.0
    latency_ms: float = 0.0  # end of the window's audio arriving -> this event
    speech: tuple[float, float] = (0.0, 0.0)  # first and last voiced instant inside the window
    voiced_spans: tuple[tuple[float, float], ...] = field(default=(), kw_only=True)  # voiced stretches (stream s)
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "speaker", "start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "speech": [round(self.speech[0], 3), round(self.speech[1], 3)],
                "score": round(self.score, 4), "candidates": [[n, round(s, 4)] for n, s in self.candidates],
                "voiced": round(self.voiced, 3), "inference_ms": round(self.inference_ms, 2),
                "latency_ms": round(self.latency_ms, 2)}
        return tagged(self, data)


@dataclass(frozen=True)
class SilenceEvent:
    """The speaker fell silent: emitted once when speech gives way to silence."""

    start: float
    end: float
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "silence", "start": round(self.start, 3), "end": round(self.end, 3)}
        return tagged(self, data)


@dataclass(frozen=True)
class StatusEvent:
    """Device and pipeline states: started, reconnecting, device-lost, stopped, error, ..."""

    state: str
    message: str = ""
    details: dict = field(default_factory=dict)
    wall_time: float = field(default_factory=time.time)
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "status", "state": self.state, "message": self.message, "time": round(self.wall_time, 3),
                **self.details}
        return tagged(self, data)


@dataclass(frozen=True)
class TurnEvent:
    """A closed speaker turn in meeting mode: one voice from where it started to where it
    stopped (a longer pause, or another voice taking over). ``confirmed`` is the stream time at
    which it closed."""

    start: float
    end: float
    label: str
    confirmed: float
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "turn", "start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "confirmed": round(self.confirmed, 3)}
        return tagged(self, data)


@dataclass(frozen=True)
class RelabelEvent:
    """Live meeting clustering changed its mind: every turn labelled ``was`` between ``start``
    and ``end`` is ``label`` from now on (two guests found to be one voice, or a guest matched
    to an enrolled name once enough of the voice was heard)."""

    start: float
    end: float
    label: str
    was: str
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "relabel", "start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "was": self.was}
        return tagged(self, data)


@dataclass(frozen=True)
class DoorEvent:
    """A door decision, on the event stream and in the audit log."""

    label: str
    granted: bool
    score: float
    reason: str
    start: float
    end: float
    scores: tuple[float, ...]
    cooldown_until: float = 0.0  # stream time before which the door will not open again
    wall_time: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16], kw_only=True)  # joins event, audit and hook
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "door", "id": self.id, "label": self.label, "granted": self.granted, "score": round(self.score, 4),
                "reason": self.reason, "start": round(self.start, 3), "end": round(self.end, 3),
                "scores": [round(s, 4) for s in self.scores], "time": round(self.wall_time, 3)}
        return tagged(self, data)


@dataclass(frozen=True)
class VisitEvent:
    """A door visit's evidence so far: the voiced audio since the visit began (its last
    ``visit_s`` seconds) embedded in one pass and scored against every voice. ``final`` marks
    the visit's last word: a pause ended it, or it ran past ``max_visit_s``."""

    start: float
    end: float
    label: str  # the best-scoring voice (not yet held to any threshold: the door does that)
    score: float
    runner_up: float  # the second best voice's score (-1 when there is none), for the margin
    voiced_s: float  # voiced seconds heard in this visit
    final: bool = False
    attempt: int = 0  # visits counted from the stream's start
    stream: str = field(default="", kw_only=True)  # which input, when several are served
    demo: bool = field(default=False, kw_only=True)  # made up by the demo stream, not heard

    def to_dict(self) -> dict:
        data = {"event": "visit", "start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                "score": round(self.score, 4), "runner_up": round(self.runner_up, 4),
                "voiced_s": round(self.voiced_s, 3), "final": self.final, "attempt": self.attempt}
        return tagged(self, data)


Event = SpeakerEvent | SilenceEvent | StatusEvent | TurnEvent | RelabelEvent | DoorEvent | VisitEvent
