"""The live pipeline, one direction: sources -> VAD -> windows -> engine -> decisions -> sinks.

Each input is a ``Stream`` with its own VAD, windower, decider, state and sinks, read by a
thread of its own (capture callbacks only enqueue). The ``Pipeline`` thread collects the
windows that fall due at the same hop in every stream and sends them to the engine as one
batch, so four microphones cost one inference call per hop, not four. Events are tagged with
their stream's name. One stream is the same code with a batch of one.

Only the pipeline thread writes to sinks: what a reader thread has to say (a lost device, a gap
in the audio) travels through the same queue as its windows, so it is delivered in order, and
no sink is ever entered by two threads. Shutdown is ordered: readers end first (bounded); then
each stream's sinks finish (a door's worker works off its queue), what other threads posted
meanwhile is delivered, the stream says "stopped" and closes its own sinks; what was posted
while they closed still reaches the shared sinks, which close last. Events posted from other
threads never wait for room in the queue (``Inbox.post``), so no worker blocks on a pipeline
that has stopped reading.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from spkrec.daemon.pipeline.decisions import Decider
from spkrec.daemon.pipeline.events import Event, StatusEvent
from spkrec.daemon.pipeline.sinks import Sink
from spkrec.daemon.pipeline.sources import Block, Source
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.pipeline.vad import Vad
from spkrec.daemon.pipeline.windowing import Window, Windower
from spkrec.daemon.service.heap import HeapTrimmer
from spkrec.daemon.service.notify import Supervisor
from spkrec.models.engine import Engine
from spkrec.models.utterance import embed_once

READERS_JOIN_S = 5.0  # how long shutdown waits for reader threads (each checks ``stop`` every 0.1-0.2 s)
MAX_BATCH = 16  # windows per engine call when a fast (file) stream has queued many: a batch's
# activations are held while it runs (16 int8 windows peak near 370 MB RSS, 64 fp32 ones ~800 MB)


class Inbox(queue.Queue):
    """The pipeline thread's queue. A reader's windows are bounded (``put`` waits: back-pressure
    on a reader that is ahead); events other threads post (a door worker's report, a device
    status) are never refused nor waited on (``post``): they are few, and a thread blocked on a
    queue that the pipeline has stopped reading (at shutdown, while it waits for that thread)
    would never return."""

    def post(self, item: tuple) -> None:
        with self.not_full:  # the queue's own lock, as ``put`` takes it, without the wait for room
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


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
    stages: list = field(default_factory=list)  # after the decider, with the engine: a door's visits (door/visit.py)
    name: str = ""
    shared: Sequence[Sink] = ()
    demo: bool = False  # the demo stream: every event says so
    notices: list = field(default_factory=list)  # status events (start warnings) said after "listening"

    _outbox: deque = field(default_factory=deque, init=False, repr=False)  # events waiting for delivery
    _delivering: bool = field(default=False, init=False, repr=False)
    _owner: int | None = field(default=None, init=False, repr=False)  # the thread that may write the sinks
    _post: Callable[[Event], None] | None = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)  # own sinks closed: only the shared ones hear more

    def attach(self, post: Callable[[Event], None]) -> None:
        """From now on only the calling thread delivers events; others hand theirs to ``post``."""
        self._owner, self._post = threading.get_ident(), post

    def detach(self) -> None:
        self._owner = self._post = None

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to the state and every sink, in causal order.

        A sink may emit while it handles an event (the door decides on a speaker event, turns
        close on silence). Those events wait in a FIFO until the current one has reached every
        sink, so any log sees the cause before its effects. Called from another thread (a
        capture callback's status), the event is posted to the pipeline thread instead.
        """
        if self._post is not None and threading.get_ident() != self._owner:
            self._post(event)
            return
        if (self.name and not event.stream) or (self.demo and not event.demo):  # every event type has both
            event = dataclasses.replace(event, stream=event.stream or self.name, demo=self.demo)
        self._outbox.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._outbox:
                self._deliver(self._outbox.popleft())
        finally:
            self._delivering = False

    def _deliver(self, event: Event) -> None:
        self.state.handle(event)
        for sink in (*(() if self._closed else self.sinks), *self.shared):
            sink.handle(event)

    def read(self, stop: threading.Event, out: queue.Queue) -> None:
        """Reader thread: blocks -> VAD frames -> due windows into ``out``; then (self, None),
        or (self, exception) when the source failed. Status events go into ``out`` too, in
        order with the windows, for the pipeline thread to deliver."""
        outcome: BaseException | None = None
        try:
            for block in self.source.blocks(stop):
                self.state.last_audio = block.arrival
                self.counters()
                if block.lost_s > 0:
                    self._gap(block, out)
                for frame in self.vad.frames(block.samples):
                    self.state.level_db, self.state.voiced = frame.level_db, frame.voiced
                    for window in self.windower.push(frame, block.arrival):
                        out.put((self, window))
        except Exception as exc:  # handed to the pipeline thread, which reports it at the CLI edge
            outcome = exc
        finally:
            out.put((self, outcome))

    def _gap(self, block: Block, out: queue.Queue) -> None:
        """Audio that never arrived still takes time: stream time moves on by it (as silence),
        so event and RTTM times stay true to the clock, and a ``gap`` status says so."""
        rate = self.windower.rate
        at = self.windower.filled / rate
        out.put((self, StatusEvent("gap", f"{block.lost_s:.2f} s of audio lost at {at:.2f} s", {
            "lost_s": round(block.lost_s, 3), "start": round(at, 3), "end": round(at + block.lost_s, 3)})))
        for window in self.windower.skip(int(round(block.lost_s * rate)), block.arrival):
            out.put((self, window))

    def counters(self) -> None:
        self.state.dropped = getattr(self.source, "dropped_blocks", 0)
        self.state.overflows = getattr(self.source, "overflows", 0)

    def started(self, engine: Engine) -> None:
        w = self.windower
        self.emit(StatusEvent("listening", f"listening on {self.source.name}", {
            "source": self.source.name, "rate": w.rate, "native_rate": self.source.native_rate,
            "provider": engine.provider, "precision": engine.precision, "model": str(engine.source),
            **({"precision_note": engine.precision_note} if engine.precision_note else {}),
            "window_s": w.window / w.rate,
            "hop_s": w.hop / w.rate, **({"demo": True} if self.demo else {})}))
        for notice in self.notices:
            self.emit(notice)

    def stopped(self, by_signal: bool, settle: Callable[[], None] = lambda: None) -> None:
        """The stream's last words: its own sinks finish what is open (a meeting's last turn, a
        door's queued actions) and ``settle`` delivers what other threads posted meanwhile (the
        door worker's reports) before "stopped" goes out; then the sinks close. Anything said
        after that goes to the shared sinks only."""
        self.source.close()
        self.counters()
        for sink in self.sinks:
            finish = getattr(sink, "finish", None)
            if finish is not None:
                finish()
        settle()
        self.emit(StatusEvent("stopped", "stopped by signal" if by_signal else "stream ended",
                              {"stream_s": round(self.windower.filled / self.windower.rate, 3),
                               "dropped_blocks": self.state.dropped, "overflows": self.state.overflows,
                               "lost_s": round(self.state.lost_s, 3)}))
        for sink in self.sinks:
            sink.close()
        self._closed = True


@dataclass
class Pipeline:
    streams: list[Stream]
    engine: Engine
    sinks: Sequence[Sink] = ()  # shared by every stream
    batch_wait_s: float = 0.1  # how long a due window waits for the other streams' windows of its hop
    batch_sizes: Counter = field(default_factory=Counter)  # engine calls per batch size (bounded: <= MAX_BATCH keys)
    supervisor: Supervisor | None = None  # readiness, watchdog and SIGHUP (daemon.service)
    heap: HeapTrimmer = field(default_factory=HeapTrimmer)  # freed batch memory back to the OS (daemon.heap)

    def __post_init__(self) -> None:
        for stream in self.streams:
            stream.shared = self.sinks

    def run(self, stop: threading.Event) -> None:
        """Process audio until every source ends or ``stop`` is set, then close every sink.
        A source that failed is re-raised here once all streams have stopped."""
        due = Inbox(maxsize=MAX_BATCH * len(self.streams))
        for stream in self.streams:
            stream.attach(lambda event, s=stream: due.post((s, event)))
            stream.started(self.engine)
        readers = [threading.Thread(target=s.read, args=(stop, due), name=f"read-{s.name}", daemon=True)
                   for s in self.streams]
        for reader in readers:
            reader.start()
        if self.supervisor is not None:
            self.supervisor.ready()
        live, failures = set(self.streams), []
        try:
            while live:
                batch = self._gather(due, live, stop)
                if batch is None:  # stopped, and the readers have gone quiet without saying goodbye
                    break
                self._handle(batch, live, failures)
                self._tick()
        finally:
            signalled = stop.is_set()
            if self.supervisor is not None:
                self.supervisor.stopping()
            stop.set()  # the other readers end too when one stage failed
            self._join(readers, due, live, failures)
            for stream in self.streams:
                stream.stopped(signalled, settle=lambda: self._drain(due, live, failures))
            self._drain(due, live, failures)  # said while the streams' sinks closed: before the shared sinks close
            for sink in self.sinks:
                sink.close()
            for stream in self.streams:
                stream.detach()
        if failures:
            raise failures[0]

    def _handle(self, batch: list, live: set[Stream], failures: list) -> None:
        """Windows are scored together; a status event or a stream's end is delivered in its
        place in the queue (the windows before it are scored first), so order is kept."""
        windows: list[tuple[Stream, Window]] = []
        for stream, item in batch:
            if isinstance(item, Window):
                windows.append((stream, item))
                continue
            self._score(windows)
            windows = []
            if item is None or isinstance(item, BaseException):  # the stream ended or failed
                live.discard(stream)
                for stage in stream.stages:
                    for event in stage.end(self._embed_once):
                        stream.emit(event)
                if item is not None:
                    failures.append(item)
                    stream.emit(StatusEvent("error", str(item)))
            else:  # an event from the reader thread: a device status, a gap
                stream.emit(item)
        self._score(windows)

    def _join(self, readers: list[threading.Thread], due: queue.Queue, live: set[Stream], failures: list) -> None:
        """Wait (bounded) for the reader threads to end, delivering what they still say (a
        reader may be blocked on a full queue). Windows still queued are dropped: we are stopping."""
        deadline = time.monotonic() + READERS_JOIN_S
        while any(r.is_alive() for r in readers) and time.monotonic() < deadline:
            self._drain(due, live, failures)
            for reader in readers:
                reader.join(timeout=0.05)
        self._drain(due, live, failures)

    def _drain(self, due: queue.Queue, live: set[Stream], failures: list) -> None:
        while True:
            try:
                stream, item = due.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, Window):
                self._handle([(stream, item)], live, failures)

    def _gather(self, due: queue.Queue, live: set[Stream], stop: threading.Event) -> list | None:
        """The next batch: the first due window, then those of the other live streams at the same
        hop (waiting at most ``batch_wait_s``), plus whatever else is already queued. None when
        ``stop`` has been set for ``READERS_JOIN_S`` and nothing came."""
        first = self._first(due, stop)
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < MAX_BATCH:
            waiting = live - {s for s, item in batch if not isinstance(item, Event)}  # a window, or the end
            try:
                if waiting:
                    batch.append(due.get(timeout=max(0.0, deadline - time.monotonic())))
                else:
                    batch.append(due.get_nowait())
            except queue.Empty:
                break
        return batch

    def _tick(self) -> None:
        """The loop is alive: the watchdog hears it (a stall in inference or a sink starves it),
        and between two engine calls is when the heap can be trimmed."""
        if self.supervisor is not None:
            self.supervisor.tick()
        self.heap.tick()

    def _first(self, due: queue.Queue, stop: threading.Event) -> tuple | None:
        stopping_since: float | None = None
        while True:
            try:
                return due.get(timeout=0.2)
            except queue.Empty:
                self._tick()  # waiting for audio is not a stall
                if stop.is_set():
                    stopping_since = stopping_since or time.monotonic()
                    if time.monotonic() - stopping_since > READERS_JOIN_S:
                        return None

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
                for stage in stream.stages:
                    for event in stage.window(window, self._embed_once):
                        stream.emit(event)
            else:
                stream.state.quiet_window(window.end)
                event = stream.decider.silence(window)
                if event is not None:
                    stream.emit(event)
                for stage in stream.stages:
                    for event in stage.quiet(window, self._embed_once):
                        stream.emit(event)

    def _embed_once(self, audio: np.ndarray) -> np.ndarray:
        """One stretch of voiced audio, any length, in one pass (a stage's, e.g. a door visit)."""
        return embed_once(self.engine, audio)
