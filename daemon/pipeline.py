"""The live pipeline, one direction: source -> VAD -> windows -> engine -> decisions -> sinks.

The worker (the thread calling ``run``) does VAD, windowing and inference; capture callbacks
only enqueue and the UI redraws on its own timer, so each stage keeps its own pace.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

from spkrec.models.engine import Engine

from .decisions import Decider
from .events import Event, StatusEvent
from .sinks import Sink
from .sources import Source
from .state import LiveState
from .vad import Vad
from .windowing import Window, Windower


@dataclass
class Pipeline:
    source: Source
    vad: Vad
    windower: Windower
    engine: Engine
    decider: Decider
    state: LiveState
    sinks: Sequence[Sink]

    def emit(self, event: Event) -> None:
        self.state.handle(event)
        for sink in self.sinks:
            sink.handle(event)

    def run(self, stop: threading.Event) -> None:
        """Process audio until the source ends or ``stop`` is set, then close every sink."""
        self.emit(StatusEvent("listening", f"listening on {self.source.name}", {
            "source": self.source.name, "rate": self.windower.rate, "native_rate": self.source.native_rate,
            "provider": self.engine.provider, "model": str(self.engine.path), "window_s": self.windower.window / self.windower.rate,
            "hop_s": self.windower.hop / self.windower.rate}))
        try:
            for block in self.source.blocks(stop):
                self._counters()
                for frame in self.vad.frames(block.samples):
                    self.state.level_db, self.state.voiced = frame.level_db, frame.voiced
                    for window in self.windower.push(frame, block.arrival):
                        self._score(window)
        finally:
            self.source.close()
            self._counters()
            self.emit(StatusEvent("stopped", "stream ended" if not stop.is_set() else "stopped by signal",
                                  {"stream_s": round(self.windower.filled / self.windower.rate, 3),
                                   "dropped_blocks": self.state.dropped, "overflows": self.state.overflows}))
            for sink in self.sinks:
                sink.close()

    def _counters(self) -> None:
        self.state.dropped = getattr(self.source, "dropped_blocks", 0)
        self.state.overflows = getattr(self.source, "overflows", 0)

    def _score(self, window: Window) -> None:
        if not self.decider.needs_embedding(window):
            self.state.quiet_window(window.end)
            event = self.decider.silence(window)
            if event is not None:
                self.emit(event)
            return
        embedding = self.engine.embed(window.voiced_audio()[None, :])[0]
        latency_ms = (time.monotonic() - window.arrival) * 1000.0
        self.emit(self.decider.decide(window, embedding, self.engine.last_ms, latency_ms))
