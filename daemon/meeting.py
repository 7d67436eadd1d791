"""Meeting mode: guests for unknown voices, windows merged into turns, turns into RTTM.

Three stages, each in the pipeline's one direction:
- ``GuestDecider`` wraps the decider: a window labelled "unknown" is given a guest label
  by online clustering, so the same stranger keeps one name for the whole meeting;
- ``TurnSink`` merges consecutive windows of one label into turns and emits a ``TurnEvent``
  when a turn closes (silence, or a change of speaker seen in ``change_windows`` windows);
- ``RttmSink`` writes each closed turn as a NIST RTTM line, flushed as it closes.

Nothing grows with the meeting's length: closed turns are written out as they close and the
summary is kept as per-speaker totals, so a day-long meeting costs what a short one does.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, deque
from pathlib import Path
from typing import Callable, Iterable, TextIO

import numpy as np

from spkrec.models.config import MeetingConfig
from spkrec.models.private import open_private
from spkrec.models.scoring import UNKNOWN

from .decisions import Decider
from .events import Event, SilenceEvent, SpeakerEvent, StatusEvent, TurnEvent
from .guests import GuestClusterer
from .windowing import Window


class GuestDecider:
    """The decider of meeting mode: known voices as before, unknown ones as consistent guests."""

    def __init__(self, decider: Decider, guests: GuestClusterer, hop_s: float, smoothing: int) -> None:
        self.decider, self.guests, self.hop_s = decider, guests, hop_s
        self.recent: deque[np.ndarray] = deque(maxlen=smoothing)  # unknown windows of the current stretch

    def needs_embedding(self, window: Window) -> bool:
        return self.decider.needs_embedding(window)

    def silence(self, window: Window) -> SilenceEvent | None:
        self.recent.clear()
        return self.decider.silence(window)

    def decide(self, window: Window, embedding: np.ndarray, inference_ms: float, latency_ms: float) -> SpeakerEvent:
        event = self.decider.decide(window, embedding, inference_ms, latency_ms)
        if event.label != UNKNOWN:
            self.recent.clear()
            return event
        # Matched on the mean of the last few unknown windows, as known voices are on smoothed scores.
        self.recent.append(embedding)
        label, score = self.guests.assign(embedding, window.voiced_ratio * self.hop_s, np.mean(self.recent, axis=0))
        return dataclasses.replace(event, label=label, score=score,
                                   candidates=((label, score),) + event.candidates[:4])


class TurnTally:
    """Talk time and turns per label: what the summary needs of every turn, in constant memory."""

    def __init__(self) -> None:
        self.talk: Counter = Counter()
        self.count: Counter = Counter()

    def add(self, turn: TurnEvent) -> None:
        self.talk[turn.label] += turn.end - turn.start
        self.count[turn.label] += 1

    def renamed(self, rename: Callable[[str], str]) -> "TurnTally":
        """The same totals under final labels (guests merged since their turns closed)."""
        out = TurnTally()
        for label in self.talk:
            out.talk[rename(label)] += self.talk[label]
            out.count[rename(label)] += self.count[label]
        return out


class TurnSink:
    """Windows -> turns. A turn opens where speech starts in its first window and closes where
    speech stops in its last one (silence), or at the change point (a new speaker confirmed)."""

    def __init__(self, change_windows: int, min_turn_s: float, emit: Callable[[Event], None],
                 rename: Callable[[str], str] = lambda label: label) -> None:
        self.change_windows, self.min_turn_s = change_windows, min_turn_s
        self.emit, self.rename = emit, rename
        self.label: str | None = None
        self.start = 0.0
        self.last: SpeakerEvent | None = None
        self.pending: list[SpeakerEvent] = []  # windows of a different voice, not yet a confirmed change
        self.tally = TurnTally()

    def handle(self, event: Event) -> None:
        if isinstance(event, SpeakerEvent):
            self._window(event)
        elif isinstance(event, SilenceEvent) or (isinstance(event, StatusEvent) and event.state == "stopped"):
            self._close(self._speech_end(), event.end if isinstance(event, SilenceEvent) else self._speech_end())

    def finish(self) -> None:
        """The stream is ending: close the open turn now, so it goes out before "stopped"."""
        self._close(self._speech_end(), self._speech_end())

    def _window(self, event: SpeakerEvent) -> None:
        if self.label is None:
            self.label, self.start = event.label, event.speech[0]
        elif event.label == self.label:
            self.pending.clear()
        else:
            self.pending = [e for e in self.pending if e.label == event.label] + [event]
            if len(self.pending) >= self.change_windows:
                # The change lies about where the first window of the new voice is centred.
                first = self.pending[0]
                boundary = max(self.start, (first.start + first.end) / 2)
                self._close(boundary, event.end)
                self.label, self.start = event.label, boundary
                self.last = event
                return
        if not self.pending:
            self.last = event

    def _speech_end(self) -> float:
        return self.start if self.last is None else max(self.start, self.last.speech[1])

    def _close(self, end: float, confirmed: float) -> None:
        if self.label is not None and end - self.start >= self.min_turn_s:
            turn = TurnEvent(self.start, end, self.rename(self.label), confirmed)
            self.tally.add(turn)
            self.emit(turn)
        self.label, self.last, self.pending = None, None, []

    def close(self) -> None:
        pass


def rttm_name(label: str) -> str:
    """RTTM fields are space-separated: "Guest 1" is written "Guest_1"."""
    return re.sub(r"\s+", "_", label.strip()) or "unknown"


class RttmSink:
    """Closed turns as NIST RTTM lines: SPEAKER <file> 1 <onset> <duration> <NA> <NA> <name> <NA> <NA>.

    Lines are written and flushed as turns close, and not kept. Guests merged later may have
    been written under an older label, so at the end the file is rewritten line by line (never
    held whole) with every name under its final label, if any changed. Owner-only: it says who
    spoke when.
    """

    def __init__(self, path: Path, file_id: str, rename: Callable[[str], str] = lambda label: label) -> None:
        self.path, self.file_id, self.rename = path, rttm_name(file_id), rename
        self.written: dict[str, str] = {}  # RTTM name -> the label it was written for (one per voice)
        self.stream: TextIO = open_private(path, "w")

    def _line(self, turn: TurnEvent) -> str:
        name = rttm_name(self.rename(turn.label))
        self.written.setdefault(name, self.rename(turn.label))
        return f"SPEAKER {self.file_id} 1 {turn.start:.3f} {turn.end - turn.start:.3f} <NA> <NA> {name} <NA> <NA>\n"

    def handle(self, event: Event) -> None:
        if isinstance(event, TurnEvent):
            self.stream.write(self._line(event))
            self.stream.flush()

    def close(self) -> None:
        self.stream.close()
        final = {name: rttm_name(self.rename(label)) for name, label in self.written.items()}
        if all(name == now for name, now in final.items()):
            return
        partial = self.path.with_name(self.path.name + ".partial")
        with self.path.open(encoding="utf-8") as old, open_private(partial, "w") as new:
            for line in old:
                fields = line.split(" ")
                fields[7] = final.get(fields[7], fields[7])
                new.write(" ".join(fields))
            new.flush()
            os.fsync(new.fileno())
        partial.replace(self.path)


class Meeting:
    """Everything meeting mode adds to a pipeline: the guest decider, the turn and RTTM sinks,
    and the guests file written at the end (for enrolling a guest under a real name)."""

    def __init__(self, cfg: MeetingConfig, guest_threshold: float, hop_s: float, fingerprint: str,
                 rttm: Path | None, guests_file: Path | None, file_id: str) -> None:
        self.guests = GuestClusterer(guest_threshold, cfg.merge_threshold or guest_threshold, cfg.max_guests)
        self.cfg, self.hop_s, self.fingerprint = cfg, hop_s, fingerprint
        self.rttm, self.guests_file, self.file_id = rttm, guests_file, file_id
        self.turns: TurnSink | None = None

    def decider(self, decider: Decider) -> GuestDecider:
        return GuestDecider(decider, self.guests, self.hop_s, decider.settings.smoothing)

    def sinks(self, emit: Callable[[Event], None]) -> list:
        self.turns = TurnSink(self.cfg.change_windows, self.cfg.min_turn_s, emit,
                              self.guests.current)
        sinks: list = [self.turns, _GuestsWriter(self)]
        if self.rttm is not None:
            sinks.append(RttmSink(self.rttm, self.file_id, self.guests.current))
        return sinks

    def final_turns(self) -> TurnTally:
        """Talk time and turns of every closed turn, per final label (guests merged since): what
        ``summary`` takes. Totals, not the turns themselves, so memory stays flat."""
        tally = self.turns.tally if self.turns else TurnTally()
        return tally.renamed(self.guests.current)

    def summary(self) -> list[tuple[str, float, int, float]]:
        return summary(self.final_turns())


class _GuestsWriter:
    """Writes the guests file when the stream ends (a sink, so it runs after the last window)."""

    def __init__(self, meeting: Meeting) -> None:
        self.meeting = meeting

    def handle(self, event: Event) -> None:
        pass

    def close(self) -> None:
        if self.meeting.guests_file is not None and self.meeting.guests.guests:
            self.meeting.guests.save(self.meeting.guests_file, self.meeting.fingerprint)


def summary(turns: TurnTally | Iterable[TurnEvent]) -> list[tuple[str, float, int, float]]:
    """(label, talk seconds, turns, share of all talk) per speaker, most talk first."""
    tally = turns if isinstance(turns, TurnTally) else TurnTally()
    if tally is not turns:
        for turn in turns:
            tally.add(turn)
    total = sum(tally.talk.values()) or 1.0
    return [(label, seconds, tally.count[label], seconds / total) for label, seconds in tally.talk.most_common()]
