"""The live pipeline, one direction: sources -> VAD -> windows -> engine -> decisions -> sinks.

Each input is a ``Stream`` with its own VAD, windower, decider, state and sinks, read by a
thread of its own (capture callbacks only enqueue). The ``Pipeline`` thread collects the
windows that fall due at the same hop in every stream and sends them to the engine as one
batch, so four microphones cost one inference call per hop, not four. Events are tagged with
their stream's name. One stream is the same code with a batch of one.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from spkrec.models.engine import Engine

from .decisions import Decider
from .events import Event, StatusEvent
from .sinks import Sink
from .sources import Source
from .state import LiveState
from .vad import Vad
from .windowing import Window, Windower

MAX_BATCH = 16  # windows per engine call when a fast (file) stream has queued many: ONNX Runtime's
# memory arena grows to the largest batch it has run (64 held ~800 MB on the CPU, 16 about half)


@dataclass(eq=False)  # identity, not field equality: streams are kept in sets
class Stream:
    """One input and everything that is per input. ``sinks`` are this stream's own (door,
    meeting turns); the pipeline's shared sinks (event log, UI) see every stream's events."""

    source: Source
    vad: Vad
    windower: Windower
    decider: Decider
    state: LiveState
    sinks: list = field(default_factory=list)
    name: str = ""
    shared: Sequence[Sink] = ()

    def emit(self, event: Event) -> None:
        if self.name and not event.stream:  # every event type has the field
            event = dataclasses.replace(event, stream=self.name)
        self.state.handle(event)
        for sink in (*self.sinks, *self.shared):
            sink.handle(event)

    def read(self, stop: threading.Event, out: queue.Queue) -> None:
        """Reader thread: blocks -> VAD frames -> due windows into ``out``; then (self, None),
        or (self, exception) when the source failed."""
        outcome: BaseException | None = None
        try:
            for block in self.source.blocks(stop):
                self.counters()
                for frame in self.vad.frames(block.samples):
                    self.state.level_db, self.state.voiced = frame.level_db, frame.voiced
                    for window in self.windower.push(frame, block.arrival):
                        out.put((self, window))
        except Exception as exc:  # handed to the pipeline thread, which reports it at the CLI edge
            outcome = exc
        finally:
            out.put((self, outcome))

    def counters(self) -> None:
        self.state.dropped = getattr(self.source, "dropped_blocks", 0)
        self.state.overflows = getattr(self.source, "overflows", 0)

    def started(self, engine: Engine) -> None:
        w = self.windower
        self.emit(StatusEvent("listening", f"listening on {self.source.name}", {
            "source": self.source.name, "rate": w.rate, "native_rate": self.source.native_rate,
            "provider": engine.provider, "model": str(engine.path), "window_s": w.window / w.rate,
            "hop_s": w.hop / w.rate}))

    def stopped(self, by_signal: bool) -> None:
        self.source.close()
        self.counters()
        self.emit(StatusEvent("stopped", "stopped by signal" if by_signal else "stream ended",
                              {"stream_s": round(self.windower.filled / self.windower.rate, 3),
                               "dropped_blocks": self.state.dropped, "overflows": self.state.overflows}))
        for sink in self.sinks:
            sink.close()


@dataclass
class Pipeline:
    streams: list[Stream]
    engine: Engine
    sinks: Sequence[Sink] = ()  # shared by every stream
    batch_wait_s: float = 0.1  # how long a due window waits for the other streams' windows of its hop
    batch_sizes: Counter = field(default_factory=Counter)  # engine calls per batch size (bounded: <= MAX_BATCH keys)

    def __post_init__(self) -> None:
        for stream in self.streams:
            stream.shared = self.sinks

    def run(self, stop: threading.Event) -> None:
        """Process audio until every source ends or ``stop`` is set, then close every sink.
        A source that failed is re-raised here once all streams have stopped."""
        due: queue.Queue = queue.Queue(maxsize=MAX_BATCH * len(self.streams))
        for stream in self.streams:
            stream.started(self.engine)
        readers = [threading.Thread(target=s.read, args=(stop, due), name=f"read-{s.name}", daemon=True)
                   for s in self.streams]
        for reader in readers:
            reader.start()
        live, failures = set(self.streams), []
        try:
            while live:
                batch = self._gather(due, live)
                windows = []
                for stream, item in batch:
                    if isinstance(item, Window):
                        windows.append((stream, item))
                    else:  # the stream ended (None) or failed (an exception)
                        live.discard(stream)
                        if item is not None:
                            failures.append(item)
                            stream.emit(StatusEvent("error", str(item)))
                self._score(windows)
        finally:
            signalled = stop.is_set()
            stop.set()  # the other readers end too when one stage failed
            for stream in self.streams:
                stream.stopped(by_signal=signalled)
            for sink in self.sinks:
                sink.close()
        if failures:
            raise failures[0]

    def _gather(self, due: queue.Queue, live: set[Stream]) -> list:
        """The next batch: the first due window, then those of the other live streams at the same
        hop (waiting at most ``batch_wait_s``), plus whatever else is already queued."""
        batch = [due.get()]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < MAX_BATCH:
            waiting = live - {s for s, _ in batch}
            try:
                if waiting:
                    batch.append(due.get(timeout=max(0.0, deadline - time.monotonic())))
                else:
                    batch.append(due.get_nowait())
            except queue.Empty:
                break
        return batch

    def _score(self, windows: list[tuple[Stream, Window]]) -> None:
        """Voiced windows of every stream in one engine call; decisions in each stream's order."""
        voiced = [(s, w) for s, w in windows if s.decider.needs_embedding(w)]
        embeddings = np.zeros((0, 0), np.float32)
        if voiced:
            embeddings = self.engine.embed(np.stack([w.voiced_audio() for _, w in voiced]))
            self.batch_sizes[len(voiced)] += 1
        rows = {id(w): i for i, (_, w) in enumerate(voiced)}
        done = time.monotonic()
        for stream, window in windows:
            if id(window) in rows:
                stream.emit(stream.decider.decide(window, embeddings[rows[id(window)]], self.engine.last_ms,
                                                  (done - window.arrival) * 1000.0))
            else:
                stream.state.quiet_window(window.end)
                event = stream.decider.silence(window)
                if event is not None:
                    stream.emit(event)
