"""Voices nobody enrolled, told apart online: "Guest 1", "Guest 2", ... for a whole meeting.

Each guest is a running centroid of its windows. A window that matches no known speaker
joins the closest guest if it is close enough, else starts a new one; guests whose centroids
converge are merged (early windows of one voice can split before its centroid settles). The
windows are kept so a guest can be enrolled under a real name afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkrec.models.errors import GalleryError
from spkrec.models.private import write_private
from spkrec.models.scoring import normalize

GUEST_PREFIX = "Guest"


KEEP_WINDOWS = 600  # per guest: five minutes of windows is plenty to enroll from, and memory stays flat


@dataclass(eq=False)
class Guest:
    label: str
    total: np.ndarray | None = None  # running sum of unit window embeddings
    windows: list[np.ndarray] = field(default_factory=list)
    voiced_s: float = 0.0

    @property
    def centroid(self) -> np.ndarray:
        return normalize(self.total)

    def add(self, embeddings: list[np.ndarray], total: np.ndarray, voiced_s: float) -> None:
        self.total = total if self.total is None else self.total + total
        self.windows = (self.windows + embeddings)[-KEEP_WINDOWS:]
        self.voiced_s += voiced_s


class GuestClusterer:
    def __init__(self, threshold: float, merge_threshold: float, max_guests: int) -> None:
        self.threshold, self.merge_threshold, self.max_guests = threshold, merge_threshold, max_guests
        self.guests: list[Guest] = []
        self.renamed: dict[str, str] = {}  # merged-away label -> the label it lives on as
        self.counter = 0

    def assign(self, embedding: np.ndarray, voiced_s: float, query: np.ndarray | None = None) -> tuple[str, float]:
        """(guest label, cosine to its centroid) for one unknown window, matched by ``query`` (by
        default the window itself; the daemon passes the mean of the last few unknown windows)."""
        embedding = normalize(embedding)
        query = embedding if query is None else normalize(query)
        scores = [float(query @ g.centroid) for g in self.guests]
        best = int(np.argmax(scores)) if scores else -1
        if best < 0 or (scores[best] < self.threshold and len(self.guests) < self.max_guests):
            self.counter += 1
            self.guests.append(Guest(f"{GUEST_PREFIX} {self.counter}"))
            best, score = len(self.guests) - 1, 1.0
        else:
            score = scores[best]
        guest = self.guests[best]
        guest.add([embedding], embedding.astype(np.float64), voiced_s)
        self._merge(guest)
        return self.current(guest.label), score

    def _merge(self, changed: Guest) -> None:
        """Fold into ``changed`` every younger guest whose centroid now matches it (the older label stays)."""
        for other in list(self.guests):
            alive = any(g is other for g in self.guests)
            if not alive or other is changed or float(changed.centroid @ other.centroid) < self.merge_threshold:
                continue
            keep, gone = (changed, other) if self._number(changed) < self._number(other) else (other, changed)
            keep.add(gone.windows, gone.total, gone.voiced_s)
            self.guests = [g for g in self.guests if g is not gone]
            self.renamed[gone.label] = keep.label
            changed = keep

    @staticmethod
    def _number(guest: Guest) -> int:
        return int(guest.label.rsplit(" ", 1)[1])

    def current(self, label: str) -> str:
        """What a guest label is called now, after any merges."""
        while label in self.renamed:
            label = self.renamed[label]
        return label

    def save(self, path: Path, fingerprint: str) -> None:
        """The guests' windows, for `spkrec enroll NAME --from-guest LABEL --guests FILE`. Voiceprints
        of people who never agreed to enrol: written owner-only, atomically."""
        data = {"spkrec_guests": 1, "fingerprint": fingerprint,
                "guests": [{"label": g.label, "voiced_s": round(g.voiced_s, 2),
                            "windows": np.stack(g.windows).round(6).tolist()} for g in self.guests]}
        write_private(path, json.dumps(data))


def load_guest(path: Path, label: str) -> tuple[str, np.ndarray, float]:
    """(model fingerprint, window embeddings, voiced seconds) of one guest in a saved meeting."""
    try:
        data = json.loads(Path(path).read_text())
        guests = {g["label"]: g for g in data["guests"]}
        fingerprint = data["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalleryError(f"{path} is not a spkrec guests file ({exc})") from None
    if label not in guests:
        raise GalleryError(f"no '{label}' in {path} (it has: {', '.join(guests) or 'no guests'})")
    guest = guests[label]
    return fingerprint, np.asarray(guest["windows"], np.float32), float(guest["voiced_s"])
