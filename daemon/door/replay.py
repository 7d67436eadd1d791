"""A recording replayed through a door's own stages: what `spkrec calibrate` and the verification
benchmark measure a door on.

The file goes through the live pipeline itself (file source, VAD, windows, decider, the visit
tracker and the door policy), read as fast as it decodes; nothing is copied, so the visits and
their evidence are exactly those a daemon would see in the same audio.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from spkrec.daemon.door.config import DoorConfig
from spkrec.daemon.door.policy import NEVER, DoorPolicy
from spkrec.daemon.door.visit import VisitTracker
from spkrec.daemon.pipeline.decisions import Decider, DeciderSettings, Roster
from spkrec.daemon.pipeline.events import DoorEvent, Event, VisitEvent
from spkrec.daemon.pipeline.run import Pipeline, Stream
from spkrec.daemon.pipeline.sources import FileSource
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.pipeline.vad import Vad
from spkrec.daemon.pipeline.windowing import Windower
from spkrec.models.config import Config


class _Collect:
    """A sink that keeps the events of the kinds asked for."""

    def __init__(self, *kinds: type) -> None:
        self.kinds, self.events = kinds, []

    def handle(self, event: Event) -> None:
        if isinstance(event, self.kinds):
            self.events.append(event)

    def close(self) -> None:
        pass


class _Decide:
    """The door's policy as a sink, its decisions kept (no hook, no audit: nothing is actuated)."""

    def __init__(self, policy: DoorPolicy) -> None:
        self.policy, self.events = policy, []

    def handle(self, event: Event) -> None:
        decision = self.policy.observe(event)
        if decision is not None:
            self.events.append(decision)

    def close(self) -> None:
        pass


def _stream(engine: Any, path: Path, roster: Roster, door: DoorConfig, cfg: Config, threshold: float,
            sinks: list) -> Stream:
    info = engine.info
    rate, window_s, hop_s = info.sample_rate, cfg.stream.window_s or info.window_s, cfg.stream.hop_s or info.hop_s
    source = FileSource(path, rate, cfg.audio.block_s, realtime=False)
    settings = DeciderSettings(threshold, cfg.decision.margin, cfg.stream.smoothing, cfg.vad.min_voiced_ratio)
    return Stream(source, Vad(rate, cfg.vad.frame_ms, cfg.vad.aggressiveness), Windower(rate, window_s, hop_s),
                  Decider(roster, settings),
                  LiveState(source=source.name, rate=rate, provider=getattr(engine, "provider", "cpu"), hop_s=hop_s,
                            timeline_s=60),
                  sinks=sinks, stages=[VisitTracker(roster, rate, hop_s, door.visit_s, door.every_s, door.max_visit_s)])


def visits(engine: Any, path: Path, roster: Roster, door: DoorConfig, cfg: Config) -> list[list[VisitEvent]]:
    """The visits a door would see in this recording: each attempt's evidence, in order."""
    collect = _Collect(VisitEvent)
    Pipeline([_stream(engine, path, roster, door, cfg, 1.0, [collect])], engine).run(threading.Event())
    attempts: dict[int, list[VisitEvent]] = {}
    for event in collect.events:
        attempts.setdefault(event.attempt, []).append(event)
    return list(attempts.values())


def critical(attempt: list[VisitEvent], door: DoorConfig, margin: float) -> float:
    """The highest door threshold at which this visit would be granted (``NEVER``: at none): the
    live policy's own ``grantable`` over the visit's evidence."""
    policy = DoorPolicy(door, lambda: float("inf"), margin)
    return max((policy.grantable(event) for event in attempt), default=NEVER)


def door_decisions(engine: Any, path: Path, roster: Roster, door: DoorConfig, cfg: Config,
                   threshold: float) -> list[DoorEvent]:
    """What the door decides over this recording at ``threshold`` (grants and refusals, no hook run)."""
    decide = _Decide(DoorPolicy(door, lambda: threshold, cfg.decision.margin))
    Pipeline([_stream(engine, path, roster, door, cfg, threshold, [decide])], engine).run(threading.Event())
    return decide.events
