"""What the live screen and the exit summary show: a bounded snapshot of the running stream.

Updated by the worker (events, levels), read by the UI's refresh thread; every collection is
bounded so memory stays flat over hours.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from spkrec.daemon.pipeline.events import (DoorEvent, Event, RelabelEvent, SilenceEvent, SpeakerEvent, StatusEvent,
                                           TurnEvent)
from spkrec.models.scoring import UNKNOWN


@dataclass
class LiveState:
    source: str
    rate: int
    provider: str
    hop_s: float
    timeline_s: float
    demo: bool = False
    name: str = ""  # the stream's name, when the daemon serves several
    status: str = "starting"
    status_message: str = ""
    current: SpeakerEvent | None = None
    speaking: bool = False
    stream_time: float = 0.0
    level_db: float = -120.0
    voiced: bool = False
    overflows: int = 0
    dropped: int = 0
    windows: int = 0
    gaps: int = 0  # stretches of audio that never arrived (dropped blocks, a lost device)
    lost_s: float = 0.0  # and their length in all
    door: DoorEvent | None = None  # the last door decision, when a door is configured
    talk_time: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)  # windows decided "known", "unknown" or "silence"
    door_decisions: Counter = field(default_factory=Counter)  # "granted", "denied"
    last_audio: float = field(default_factory=time.monotonic)  # when the source last delivered audio (reader thread)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.timeline: deque[str] = deque(maxlen=max(1, int(self.timeline_s / self.hop_s)))
        self.inference_ms: deque[float] = deque(maxlen=200)
        self.latency_ms: deque[float] = deque(maxlen=200)
        self.turn_log: deque[TurnEvent] = deque(maxlen=50)  # meeting mode: the latest closed turns

    def handle(self, event: Event) -> None:
        with self.lock:
            if isinstance(event, SpeakerEvent):
                self.windows += 1
                self.decisions["unknown" if event.label == UNKNOWN else "known"] += 1
                if self.current is None or not self.speaking or event.label != self.current.label:
                    self.turns[event.label] += 1
                self.current, self.speaking = event, True
                self.talk_time[event.label] += self.hop_s
                self.timeline.append(event.label)
                self.inference_ms.append(event.inference_ms)
                self.latency_ms.append(event.latency_ms)
                self.stream_time = event.end
            elif isinstance(event, SilenceEvent):
                self.speaking = False
                self.stream_time = event.end
            elif isinstance(event, StatusEvent) and event.state == "gap":
                self.gaps += 1  # a gap is an incident, not a state: the stream is still listening
                self.lost_s += float(event.details.get("lost_s", 0.0))
            elif isinstance(event, StatusEvent):
                self.status, self.status_message = event.state, event.message
            elif isinstance(event, DoorEvent):
                self.door = event
                self.door_decisions["granted" if event.granted else "denied"] += 1
            elif isinstance(event, TurnEvent):
                self.turn_log.append(event)
            elif isinstance(event, RelabelEvent):
                self.turn_log = deque((dataclasses.replace(t, label=event.label) if t.label == event.was and
                                       event.start <= t.start <= event.end else t for t in self.turn_log), maxlen=50)

    def quiet_window(self, end: float) -> None:
        """A hop without scored speech, for the timeline."""
        with self.lock:
            self.timeline.append("")
            self.decisions["silence"] += 1
            self.stream_time = end

    def close(self) -> None:
        pass

    @staticmethod
    def percentile(values, q: float) -> float:
        return float(np.percentile(list(values), q)) if values else 0.0
