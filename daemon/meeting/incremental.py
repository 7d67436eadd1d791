"""Live meeting clustering, in the manner of diart: recent windows (local) against the meeting's
speakers so far (global), under one clustering rule.

At every voiced window, the recent windows (the last ``context`` of them) and the global
speakers are clustered together, the global speakers entering as the clusters they already are
(their sum of embeddings and their size), by the same agglomeration ``spkrec label`` runs over
a whole recording, with the model's own thresholds (``models.clustering``):
- a recent window joins a global speaker when their cosine clears the threshold for the
  smaller one's size, and the recent windows that join none are a new speaker once they hold
  ``min_speaker_s`` of speech (the new-speaker threshold is the same scale); fewer go to the
  closest speaker until they say more;
- global speakers never leave their clusters, so a recent window is never split between them
  (the constraint); two global speakers whose centroids come to clear the centroid threshold
  are one voice: the younger is merged into the older, and its turns are relabelled;
- a window leaving the context is added to its speaker for good (the centroid update).
Memory is the speakers' sums plus the context, however long the meeting.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from spkrec.models.audio import AudioTally
from spkrec.models.clustering import Scales, agglomerate, fold_small
from spkrec.models.scoring import normalize

KEEP_WINDOWS = 600  # per speaker, for enrolling a guest afterwards: five minutes is plenty, memory stays flat


@dataclass(eq=False)
class Speaker:
    number: int  # "Guest <number>" until named
    total: np.ndarray  # sum of the unit embeddings of its windows that left the context
    size: int = 0  # windows in ``total``
    seconds: float = 0.0
    kept: deque = field(default_factory=lambda: deque(maxlen=KEEP_WINDOWS))
    audio: AudioTally = AudioTally()  # of every settled window (enrollment's checks for a guest)


class IncrementalClusterer:
    def __init__(self, scales: Scales, min_speaker_s: float, max_speakers: int, context: int,
                 apart: Callable[[int, int], bool] = lambda a, b: False) -> None:
        """``apart(a, b)``: speakers a and b are known to be two people (the caller names them
        after two different enrolled voices); they are never merged."""
        self.scales, self.min_speaker_s, self.max_speakers = scales, min_speaker_s, max_speakers
        self.apart = apart
        self.context: deque[tuple[np.ndarray, float, int]] = deque()  # (unit embedding, seconds, speaker number)
        self.audio: deque[AudioTally] = deque()  # each context window's audio tally, in step with ``context``
        self.size = context
        self.speakers: dict[int, Speaker] = {}
        self.merged: list[tuple[int, int]] = []  # (gone, into) speaker numbers, for the caller to relabel
        self.counter = 0

    def add(self, embedding: np.ndarray, seconds: float, audio: AudioTally = AudioTally()) -> int:
        """The speaker number of a new window (``audio``: its levels, summed per speaker)."""
        x = normalize(embedding).astype(np.float64)
        self.context.append((x, seconds, -1))
        self.audio.append(audio)
        while len(self.context) > self.size:
            self._settle(*self.context.popleft(), self.audio.popleft())
        numbers = [n for n, s in self.speakers.items() if s.size]  # speakers with settled windows
        rows = np.stack([self.speakers[n].total for n in numbers] + [e for e, _, _ in self.context])
        sizes = np.array([self.speakers[n].size for n in numbers] + [1] * len(self.context))
        weights = np.array([self.speakers[n].seconds for n in numbers] + [s for _, s, _ in self.context])
        labels = agglomerate(rows, self.scales, self.max_speakers, sizes)
        labels = fold_small(rows, labels, weights, self.min_speaker_s)
        labels = self._no_chaining(rows, sizes, labels, numbers)
        owner = self._owners(labels[:len(numbers)], numbers, labels[len(numbers):])
        self.context = deque((e, s, owner[k]) for (e, s, _), k in zip(self.context, labels[len(numbers):]))
        return self.context[-1][2]

    def centroids(self) -> dict[int, np.ndarray]:
        """Every speaker's centroid: its settled windows and those in the context now."""
        sums = {n: s.total.copy() for n, s in self.speakers.items()}
        for e, _, n in self.context:
            sums[n] = sums[n] + e
        return {n: normalize(v) for n, v in sums.items()}

    def sizes(self) -> dict[int, int]:
        sizes = {n: s.size for n, s in self.speakers.items()}
        for _, _, n in self.context:
            sizes[n] += 1
        return sizes

    def windows_of(self, number: int) -> tuple[np.ndarray, float]:
        """A speaker's kept windows (settled and in context) and their voiced seconds."""
        speaker = self.speakers[number]
        recent = [(e, s) for e, s, n in self.context if n == number]
        windows = list(speaker.kept) + [e.astype(np.float32) for e, _ in recent]
        return np.stack(windows[-KEEP_WINDOWS:]), speaker.seconds + sum(s for _, s in recent)

    def audio_of(self, number: int) -> AudioTally:
        """A speaker's audio tally: its settled windows and those in the context now."""
        recent = (a for (_, _, n), a in zip(self.context, self.audio) if n == number)
        return sum(recent, self.speakers[number].audio)

    def _no_chaining(self, rows: np.ndarray, sizes: np.ndarray, labels: np.ndarray, numbers: list[int]) -> np.ndarray:
        """Two speakers end up in one cluster only when their own centroids clear the threshold
        for their sizes and nobody knows them to be two people; a cluster that joined them
        through recent windows between them (a voice resembling both, a mixed window) is split
        again: its recent windows go to the speaker they are closest to, the speakers stay apart."""
        labels = labels.copy()
        n = len(numbers)
        unit = normalize(rows[:n])
        for k in np.unique(labels[:n]):
            members = np.flatnonzero(labels[:n] == k)
            if members.size < 2:
                continue
            scores = unit[members] @ unit[members].T
            limits = self.scales.threshold(np.minimum.outer(sizes[members], sizes[members]))
            known_apart = any(self.apart(numbers[i], numbers[j]) for i in members for j in members if i < j)
            if (scores >= limits).all() and not known_apart:
                continue  # each pair is one voice on its own evidence: a merge
            fresh = labels.max() + 1
            for j, m in enumerate(members[1:], start=1):
                labels[m] = fresh + j - 1
            recent = n + np.flatnonzero(labels[n:] == k)
            if recent.size:
                nearest = np.argmax(normalize(rows[recent]) @ unit[members].T, axis=1)
                labels[recent] = labels[members][nearest]
        return labels

    def _owners(self, row_labels: np.ndarray, numbers: list[int], recent_labels: np.ndarray) -> dict[int, int]:
        """Cluster -> speaker number. A cluster holding settled speakers belongs to the oldest of
        them (the others merge into it); one of recent windows only, to the speaker most of them
        had a hop ago if no other cluster took it, else to a new speaker."""
        owner: dict[int, int] = {}
        for k, number in zip(row_labels, numbers):  # oldest first: numbers grow
            if k in owner:
                self._merge(number, into=owner[k])
            else:
                owner[k] = number
        before = [n for _, _, n in self.context]
        for k in dict.fromkeys(recent_labels.tolist()):
            if k in owner:
                continue
            votes = Counter(n for n, label in zip(before, recent_labels)
                            if label == k and n >= 0 and n in self.speakers and n not in owner.values())
            if votes:
                owner[k] = votes.most_common(1)[0][0]
            else:
                self.counter += 1
                self.speakers[self.counter] = Speaker(self.counter, np.zeros(self.context[0][0].size))
                owner[k] = self.counter
        for number in [n for n, s in self.speakers.items() if not s.size and n not in owner.values()]:
            taken = Counter(owner[k] for n, k in zip(before, recent_labels) if n == number)
            into = taken.most_common(1)[0][0] if taken else None
            if into is not None and not self.apart(number, into):  # its windows went to another: one voice
                self._merge(number, into=into)
            elif into is None:
                del self.speakers[number]
        return owner

    def _merge(self, gone: int, into: int) -> None:
        a, b = self.speakers.pop(gone), self.speakers[into]
        b.total, b.size, b.seconds = b.total + a.total, b.size + a.size, b.seconds + a.seconds
        b.kept.extend(a.kept)
        b.audio = b.audio + a.audio
        self.merged.append((gone, into))

    def _settle(self, x: np.ndarray, seconds: float, number: int, audio: AudioTally = AudioTally()) -> None:
        while number not in self.speakers:  # merged away since: its windows live on in the survivor
            number = dict(self.merged)[number]
        speaker = self.speakers[number]
        speaker.total = speaker.total + x
        speaker.size += 1
        speaker.seconds += seconds
        speaker.kept.append(x.astype(np.float32))
        speaker.audio = speaker.audio + audio
