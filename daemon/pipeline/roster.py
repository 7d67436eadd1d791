"""Who can be recognised: the model's trained speakers plus the enrolled ones.

The gallery is re-read whenever another process commits to it (SQLite's data_version), so
``spkrec enroll`` takes effect in a running daemon without a restart; a gallery that does not
exist yet at start is opened once the first enrollment creates it. A gallery that cannot be
read later keeps the last good roster scoring, and the error is reported, never swallowed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import numpy as np

from spkrec.daemon.pipeline.events import StatusEvent
from spkrec.models.artifact import ModelInfo
from spkrec.models.config import Config, DecisionConfig
from spkrec.models.errors import GalleryError
from spkrec.models.gallery import Gallery
from spkrec.models.thresholds import WINDOW, resolve


class Roster:
    def __init__(self, info: ModelInfo, gallery: Gallery | Path | None, trained_speakers: bool = True,
                 report: Callable[[StatusEvent], None] | None = None) -> None:
        self.info = info
        self.path = gallery if isinstance(gallery, Path) else None  # opened when it appears
        self.gallery = gallery if isinstance(gallery, Gallery) else None
        self.report = report or (lambda event: None)
        self.trained = (info.labels, info.prototypes) if trained_speakers else \
            ((), np.zeros((0, info.embedding_dim), np.float32))
        self.version: int | None = None
        self.current = self.trained
        self.calibrated: dict | None = None  # the gallery's calibration for this model, as last read
        self.failure: str | None = None  # the error last reported, so it is said once, not per window
        self.refresh()  # an unreadable gallery is refused here, at start, in one line

    def refresh(self) -> None:
        if self.gallery is None:
            if self.path is None or not self.path.is_file():
                return
            self.gallery = Gallery(self.path)
            self.report(StatusEvent("gallery", f"gallery {self.path} appeared: enrolled voices are recognised"))
        version = self.gallery.change_counter()
        if version == self.version:
            return
        names, prints = self.gallery.roster(self.info.fingerprint)
        self.calibrated = self.gallery.calibration(self.info.fingerprint)
        trained_labels, trained_protos = self.trained
        keep = [i for i, label in enumerate(trained_labels) if label not in names]  # enrolled voices win
        labels = tuple(trained_labels[i] for i in keep) + names
        protos = [trained_protos[keep]] + ([prints] if len(names) else [])
        self.current = (labels, np.concatenate(protos).astype(np.float32))
        self.version = version

    def __call__(self) -> tuple[tuple[str, ...], np.ndarray]:
        try:
            self.refresh()
            if self.failure is not None:
                self.report(StatusEvent("gallery", "gallery readable again"))
                self.failure = None
        except (GalleryError, sqlite3.Error) as exc:
            if str(exc) != self.failure:  # keep scoring with the last good roster, and say why once
                self.failure = str(exc)
                self.report(StatusEvent("error", f"gallery: {exc}; recognising the voices read before"))
        return self.current

    def names(self) -> set[str]:
        """Every name this roster can put on a voice now."""
        return set(self.current[0])


class LivePoint:
    """A threshold that follows the gallery: `spkrec calibrate` writes the gallery, the roster
    sees the change at its next read (every window), and the next decision uses the new point.
    A change is said once, as a ``threshold`` status event."""

    def __init__(self, decision: DecisionConfig, roster: Roster, kind: str = WINDOW, what: str = "threshold",
                 report: Callable[[StatusEvent], None] | None = None) -> None:
        self.decision, self.roster, self.kind, self.what = decision, roster, kind, what
        self.report = report or (lambda event: None)
        self.version = roster.version
        self.point = resolve(decision, roster.info.thresholds, roster.calibrated, kind)

    def __call__(self) -> float:
        if self.roster.version != self.version:
            self.version = self.roster.version
            point = resolve(self.decision, self.roster.info.thresholds, self.roster.calibrated, self.kind)
            if point != self.point:
                self.report(StatusEvent("threshold", f"{self.what} now {point.threshold:.3f} ({point.source})",
                                        {"threshold": round(point.threshold, 4), "source": point.source,
                                         "was": round(self.point.threshold, 4)}))
                self.point = point
        return self.point.threshold


def open_gallery(cfg: Config) -> Gallery | None:
    """The enrolled voices, if a gallery exists; the daemon never creates one."""
    path = cfg.gallery_path()
    return Gallery(path) if path.is_file() else None


def skipped_voices(gallery: Gallery | None, fingerprint: str, shown: int = 3) -> str | None:
    """One line naming the enrolled voices this model cannot score (another model made them), or None.

    They are skipped rather than refused, so the user must be told why those voices are never named.
    """
    names = gallery.foreign(fingerprint) if gallery is not None else []
    if not names:
        return None
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return (f"skipping {len(names)} voiceprint(s) enrolled with another model ({listed}): re-enroll them with this "
            "model to recognise them")
