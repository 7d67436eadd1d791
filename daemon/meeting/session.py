"""Meeting mode: who spoke when, enrolled voices by name and the others as consistent guests.

Every voiced window's embedding is kept (offline) or clustered as it comes (live):
- ``spkrec label`` clusters the whole recording at once when it ends (``models.clustering``:
  the number of speakers found by thresholds the model carries, not by hand), then labels 0.1-s
  frames by the windows covering them (``models.segmentation``), so turns begin and end where
  the voice changed, not on a window's edge;
- ``--meeting`` live clusters incrementally (``incremental``) and labels frames once every
  window covering them has arrived (one window length behind the audio); when the clustering
  changes its mind (two guests are one voice, a guest turns out to be an enrolled speaker) a
  ``relabel`` event renames the turns already sent.
Clusters are named after clustering: a speaker most of whose windows the decision rule accepts
as an enrolled voice takes that name (``Namer``); the rest are "Guest 1", "Guest 2", ...

Turns go out as ``TurnEvent``s and NIST RTTM lines as they close; the summary is kept as
per-speaker totals, so a day-long meeting costs what a short one does.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, deque
from pathlib import Path
from typing import Callable, Iterable, TextIO

import numpy as np

from spkrec.daemon.meeting.config import MeetingConfig
from spkrec.daemon.meeting.guests import Guest, save_guests
from spkrec.daemon.meeting.incremental import KEEP_WINDOWS, IncrementalClusterer
from spkrec.daemon.pipeline.decisions import Decider, Roster
from spkrec.daemon.pipeline.events import Event, RelabelEvent, SilenceEvent, SpeakerEvent, TurnEvent
from spkrec.daemon.pipeline.windowing import Window
from spkrec.models.audio import AudioTally
from spkrec.models.clustering import SEGMENT_WINDOWS, Scales, by_first_appearance, centroids_of, cluster
from spkrec.models.private import open_private
from spkrec.models.scoring import guest_label, is_guest, normalize
from spkrec.models.segmentation import FRAME_S, Frame, Turn, TurnBuilder, WindowRecord, frames


class Namer:
    """Enrolled (or trained) names for the speakers clustering found.

    A speaker takes a name when most of its windows are accepted as that voice by the same rule
    the daemon decides with (scores averaged over ``smoothing`` windows, the calibrated
    threshold). Not by its centroid's score: averaging removes the noise of single windows, so
    the centroid of a stranger whose voice resembles an enrolled one scores higher against that
    voiceprint than the stranger's windows do, above a threshold calibrated on windows.
    """

    def __init__(self, roster: Roster, threshold: float, smoothing: int = 3) -> None:
        self.roster, self.threshold, self.smoothing = roster, threshold, smoothing

    def accepted(self, windows: np.ndarray) -> list[str | None]:
        """Per window (in time order), the voice the decision rule accepts, or None."""
        labels, prototypes = self.roster()
        if not len(labels) or not len(windows):
            return [None] * len(windows)
        raw = normalize(windows) @ normalize(prototypes).T
        width = min(self.smoothing, len(raw))
        smoothed = np.stack([np.convolve(raw[:, j], np.ones(width) / width, mode="same") for j in range(raw.shape[1])], 1)
        best = np.argmax(smoothed, axis=1)
        return [labels[j] if smoothed[i, j] >= self.threshold else None for i, j in enumerate(best)]

    def name(self, windows: np.ndarray) -> str | None:
        """The voice most of a speaker's windows are accepted as, if more than half are."""
        return self.vote(self.accepted(windows))

    @staticmethod
    def vote(accepted: list[str | None]) -> str | None:
        """The name more than half of ``accepted`` (``accepted``'s output) agree on, else None."""
        votes = Counter(a for a in accepted if a is not None)
        name, count = votes.most_common(1)[0] if votes else (None, 0)
        return name if count * 2 > len(accepted) else None


class MeetingDecider:
    """The decider of meeting mode: every voiced window also goes to the meeting; live, the
    window event carries the speaker the incremental clustering gave it."""

    def __init__(self, decider: Decider, meeting: "Meeting") -> None:
        self.decider, self.meeting = decider, meeting

    def needs_embedding(self, window: Window) -> bool:
        return self.decider.needs_embedding(window)

    def silence(self, window: Window) -> SilenceEvent | None:
        self.meeting.advance(window.end)
        return self.decider.silence(window)

    def decide(self, window: Window, embedding: np.ndarray, inference_ms: float, latency_ms: float) -> SpeakerEvent:
        event = self.decider.decide(window, embedding, inference_ms, latency_ms)
        record = WindowRecord(window.start, window.end, window.voiced_spans(), normalize(embedding))
        found = self.meeting.window(record, window.voiced_ratio * self.meeting.hop_s,
                                    AudioTally.of(window.samples, window.voiced_mask))
        self.meeting.advance(window.end)
        if found is None:
            return event
        label, score = found
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

    def move(self, was: str, label: str, seconds: float | None = None) -> None:
        """A relabel: one turn of ``seconds`` (or every turn, when None) of ``was`` is ``label`` now."""
        talk = self.talk[was] if seconds is None else seconds
        count = self.count[was] if seconds is None else 1
        self.talk[was] -= talk
        self.count[was] -= count
        self.talk[label] += talk
        self.count[label] += count
        for counter in (self.talk, self.count):
            if counter[was] <= 1e-9:
                del counter[was]


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
        self.relabels: list[tuple[float, float, str, str]] = []  # (start, end, was, now), in order
        self.stream: TextIO = open_private(path, "w")

    def _line(self, turn: TurnEvent) -> str:
        name = rttm_name(self.rename(turn.label))
        self.written.setdefault(name, self.rename(turn.label))
        return f"SPEAKER {self.file_id} 1 {turn.start:.3f} {turn.end - turn.start:.3f} <NA> <NA> {name} <NA> <NA>\n"

    def handle(self, event: Event) -> None:
        if isinstance(event, TurnEvent):
            self.stream.write(self._line(event))
            self.stream.flush()
        elif isinstance(event, RelabelEvent):  # applied when the file is rewritten at the end
            self.relabels.append((event.start, event.end, rttm_name(event.was), rttm_name(event.label)))

    def close(self) -> None:
        self.stream.close()
        final = {name: rttm_name(self.rename(label)) for name, label in self.written.items()}
        if all(name == now for name, now in final.items()) and not self.relabels:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        with self.path.open(encoding="utf-8") as old, open_private(partial, "w") as new:
            for line in old:
                fields = line.split(" ")
                start = float(fields[3])
                for a, b, was, now in self.relabels:
                    if fields[7] == was and a - 5e-4 <= start <= b + 5e-4:
                        fields[7] = now
                fields[7] = final.get(fields[7], fields[7])
                new.write(" ".join(fields))
            new.flush()
            os.fsync(new.fileno())
        partial.replace(self.path)


class Meeting:
    """What offline and live meeting modes share: naming, turns out as events, RTTM, summary,
    guests file. Speakers are keys (a cluster, a live speaker) with a display label each."""

    def __init__(self, cfg: MeetingConfig, scales: Scales, namer: Namer, window_s: float, hop_s: float,
                 fingerprint: str, rttm: Path | None, guests_file: Path | None, file_id: str) -> None:
        self.cfg, self.scales, self.namer, self.window_s, self.hop_s = cfg, scales, namer, window_s, hop_s
        self.fingerprint, self.rttm, self.guests_file, self.file_id = fingerprint, rttm, guests_file, file_id
        self.builder = TurnBuilder(cfg.max_pause_s, cfg.min_turn_s, self._turn)
        self.emit: Callable[[Event], None] = lambda event: None
        self.tally = TurnTally()
        self.names: dict[int, str] = {}  # speaker key -> its label now
        self.renamed: dict[str, str] = {}  # a label turns were sent under -> the label it became
        self.guest_count = 0
        self.now = 0.0

    def decider(self, decider: Decider, emit: Callable[[Event], None]) -> MeetingDecider:
        self.emit = emit
        return MeetingDecider(decider, self)

    def sinks(self) -> list:
        sinks: list = [_MeetingEnd(self)]
        if self.rttm is not None:
            sinks.append(RttmSink(self.rttm, self.file_id, self.current))
        return sinks

    def window(self, record: WindowRecord, seconds: float, audio: AudioTally = AudioTally()) -> tuple[str, float] | None:
        """Take one voiced window (``audio``: its levels, for enrolling a guest later); live,
        return its (label, cosine to its speaker) now."""
        raise NotImplementedError

    def advance(self, now: float) -> None:
        """Stream time has reached ``now``: turns that can be decided go out."""
        self.now = now

    def finish(self) -> None:
        raise NotImplementedError

    def guests(self) -> list[Guest]:
        raise NotImplementedError

    def _label(self, key: int, windows: np.ndarray | None) -> str:
        """A speaker's label: the enrolled name its windows are accepted as, else the next guest number."""
        name = self.namer.name(windows) if windows is not None else None
        if name is None and key not in self.names:
            self.guest_count += 1
            name = guest_label(self.guest_count)
        if name is not None:
            self.names[key] = name
        return self.names[key]

    def _turn(self, turn: Turn) -> None:
        label = self.names.get(turn.speaker) or self._label(turn.speaker, None)
        event = TurnEvent(turn.start, turn.end, self.current(label), self.now)
        self.tally.add(event)
        self.emit(event)

    def current(self, label: str) -> str:
        """What a label turns were sent under is called now."""
        seen = set()
        while label in self.renamed and label not in seen:
            seen.add(label)
            label = self.renamed[label]
        return label

    def final_turns(self) -> TurnTally:
        """Talk time and turns of every closed turn, per final label (relabels are applied to
        the tally as they happen): what ``summary`` takes."""
        return self.tally

    def summary(self) -> list[tuple[str, float, int, float]]:
        return summary(self.final_turns())

    def save(self) -> None:
        guests = self.guests() if self.guests_file is not None else []
        if guests:
            save_guests(self.guests_file, self.fingerprint, guests)


class OfflineMeeting(Meeting):
    """A whole recording clustered at once when it ends, then re-segmented on 0.1-s frames."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[WindowRecord] = []
        self.seconds: list[float] = []
        self.audio: list[AudioTally] = []
        self.clusters: tuple[np.ndarray, np.ndarray] | None = None  # (labels, embeddings) once clustered

    def window(self, record: WindowRecord, seconds: float, audio: AudioTally = AudioTally()) -> None:
        self.records.append(record)
        self.seconds.append(seconds)
        self.audio.append(audio)
        return None

    def finish(self) -> None:
        if self.records:
            embeddings = np.stack([r.embedding for r in self.records])
            labels = cluster(embeddings, np.array(self.seconds), self.scales, self.cfg.min_speaker_s,
                             self.cfg.max_speakers)
            labels = self._split_strangers(embeddings, labels)
            centroids = centroids_of(embeddings, labels)
            for k in range(len(centroids)):  # guests numbered in order of first appearance
                self._label(k, embeddings[labels == k])
            self.clusters = (labels, embeddings)
            for frame in frames(self.records, centroids, 0.0, self.now):
                self.builder.push(frame)
        self.builder.finish()

    def _split_strangers(self, embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """A cluster that takes an enrolled name keeps the windows the decision rule accepts as
        that voice. The rest become a speaker of their own when they hold a speaker's worth of
        speech and the clustering scale, too, calls them another voice: a stranger the
        clustering could not tell from an enrolled voice is then a guest, not that person."""
        seconds = np.array(self.seconds)
        out = labels.copy()
        for k in range(int(labels.max()) + 1):
            members = np.flatnonzero(labels == k)
            accepted = self.namer.accepted(embeddings[members])
            name = self.namer.vote(accepted)  # scored once, not again by name()
            rest = members[[a != name for a in accepted]]
            if name is None or seconds[rest].sum() < self.cfg.min_speaker_s:
                continue
            kept = np.setdiff1d(members, rest)
            apart = float(normalize(embeddings[rest].mean(axis=0)) @ normalize(embeddings[kept].mean(axis=0)))
            if apart < self.scales.centroid:
                out[rest] = out.max() + 1
        return by_first_appearance(out)

    def guests(self) -> list[Guest]:
        if self.clusters is None:
            return []
        labels, embeddings = self.clusters
        seconds = np.array(self.seconds)
        return [(label, embeddings[labels == k][-KEEP_WINDOWS:], float(seconds[labels == k].sum()),
                 sum((a for a, n in zip(self.audio, labels) if n == k), AudioTally()))
                for k, label in self.names.items() if is_guest(label)]


class LiveMeeting(Meeting):
    """Incremental clustering; frames labelled once every window covering them has arrived."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        context = max(SEGMENT_WINDOWS, int(round(self.cfg.context_s / self.hop_s)))
        self.clusterer = IncrementalClusterer(self.scales, self.cfg.min_speaker_s, self.cfg.max_speakers, context,
                                              apart=self._two_people)
        self.recent: deque[WindowRecord] = deque()  # windows that still cover frames not yet labelled
        self.labelled_to = 0.0  # frames before this went to the turn builder
        self.merges_seen = 0
        self.shown: set[str] = set()  # labels already sent (window or turn events): renaming them is news
        self.context: deque[WindowRecord] = deque(maxlen=context)  # the clusterer's context windows
        self.sent: deque[list] = deque()  # [start, end, label] of turns sent whose windows are still in context

    def window(self, record: WindowRecord, seconds: float, audio: AudioTally = AudioTally()) -> tuple[str, float]:
        number = self.clusterer.add(record.embedding, seconds, audio)
        self.context.append(record)
        self._follow_merges()
        self._name_speakers()
        self._revise_turns()
        self.recent.append(record)
        label = self.current(self.names.get(number) or self._label(number, None))
        self.shown.add(label)
        return label, float(record.embedding @ self.clusterer.centroids()[number])

    def advance(self, now: float) -> None:
        super().advance(now)
        self._label_frames(now - self.window_s)

    def finish(self) -> None:
        self._label_frames(self.now)
        self.builder.finish()

    def _label_frames(self, upto: float) -> None:
        if upto <= self.labelled_to:
            return
        found = self.clusterer.centroids()
        numbers = list(found)
        centroids = np.stack(list(found.values())) if found else np.zeros((0, 1))
        for f in frames(list(self.recent), centroids, self.labelled_to, upto):
            self.builder.push(Frame(f.start, numbers[f.speaker] if f.speaker >= 0 else -1))
        self.labelled_to = max(self.labelled_to, round(upto / FRAME_S) * FRAME_S)
        while self.recent and self.recent[0].end <= self.labelled_to:
            self.recent.popleft()

    def _turn(self, turn: Turn) -> None:
        super()._turn(turn)
        self.sent.append([turn.start, turn.end, self.current(self.names[turn.speaker])])

    def _revise_turns(self) -> None:
        """A turn whose frames, scored again against today's centroids, now mostly belong to
        another speaker is relabelled on its own (the clustering changed its mind about those
        seconds). Only while all its windows are in the context; after that its label is final."""
        while self.sent and self.context and self.sent[0][0] < self.context[0].start:
            self.sent.popleft()
        if not self.sent:
            return
        found = self.clusterer.centroids()
        numbers, centroids = list(found), np.stack(list(found.values()))
        for turn in self.sent:
            voiced = [f.speaker for f in frames(self.context, centroids, turn[0], turn[1]) if f.speaker >= 0]
            if not voiced:
                continue
            number = numbers[Counter(voiced).most_common(1)[0][0]]
            label = self.current(self.names.get(number) or self._label(number, None))
            if label != turn[2]:
                self.emit(RelabelEvent(turn[0], turn[0], label, turn[2]))
                self.tally.move(turn[2], label, turn[1] - turn[0])
                turn[2] = label

    def _relabel(self, was: str, label: str) -> None:
        if was == label:
            return
        self.renamed[was] = label
        self.tally.move(was, label)
        for turn in self.sent:
            if turn[2] == was:
                turn[2] = label
        if was in self.shown:
            self.emit(RelabelEvent(0.0, self.now, label, was))

    def _two_people(self, a: int, b: int) -> bool:
        """Speakers named after two different enrolled voices: the decision rule tells them apart."""
        names = [self.names.get(n, "") for n in (a, b)]
        return all(n and not is_guest(n) for n in names) and names[0] != names[1]

    def _follow_merges(self) -> None:
        """The merged speaker's turns take the survivor's label, or the survivor takes theirs
        when it had none yet or was a guest and they carry an enrolled name."""
        for gone, into in self.clusterer.merged[self.merges_seen:]:
            was, now = self.names.get(gone), self.names.get(into)  # ``gone`` kept: open turns resolve through it
            if was is None:
                continue
            if now is None or (is_guest(now) and not is_guest(was)):
                self.names[into] = was
                if now is not None:
                    self._relabel(now, was)
            else:
                self._relabel(was, now)
        self.merges_seen = len(self.clusterer.merged)

    def _name_speakers(self) -> None:
        """A guest whose centroid now matches an enrolled voice takes its name (names stay)."""
        sizes = self.clusterer.sizes()
        for number in self.clusterer.speakers:
            was = self.names.get(number)
            if sizes[number] < SEGMENT_WINDOWS or (was is not None and not is_guest(was)):
                continue
            name = self.namer.name(self.clusterer.windows_of(number)[0])
            if name is not None:
                self.names[number] = name
                if was is not None:
                    self._relabel(was, name)

    def guests(self) -> list[Guest]:
        return [(label, *self.clusterer.windows_of(number), self.clusterer.audio_of(number))
                for number, label in self.names.items() if number in self.clusterer.speakers and is_guest(label)]


class _MeetingEnd:
    """The meeting's sink: closes the last turn before "stopped", writes the guests file at the end."""

    def __init__(self, meeting: Meeting) -> None:
        self.meeting = meeting

    def handle(self, event: Event) -> None:
        pass

    def finish(self) -> None:
        self.meeting.finish()

    def close(self) -> None:
        self.meeting.save()


def summary(turns: TurnTally | Iterable[TurnEvent]) -> list[tuple[str, float, int, float]]:
    """(label, talk seconds, turns, share of all talk) per speaker, most talk first."""
    tally = turns if isinstance(turns, TurnTally) else TurnTally()
    if tally is not turns:
        for turn in turns:
            tally.add(turn)
    total = sum(tally.talk.values()) or 1.0
    return [(label, seconds, tally.count[label], seconds / total) for label, seconds in tally.talk.most_common()]
