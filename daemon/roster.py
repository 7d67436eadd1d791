"""Who can be recognised: the model's trained speakers plus the enrolled ones.

The gallery is re-read whenever another process commits to it (SQLite's data_version), so
``spkrec enroll`` takes effect in a running daemon without a restart.
"""

from __future__ import annotations

import numpy as np

from spkrec.models.artifact import ModelInfo
from spkrec.models.config import Config
from spkrec.models.errors import GalleryError
from spkrec.models.gallery import Gallery


class Roster:
    def __init__(self, info: ModelInfo, gallery: Gallery | None, trained_speakers: bool = True) -> None:
        self.info, self.gallery = info, gallery
        self.trained = (info.labels, info.prototypes) if trained_speakers else \
            ((), np.zeros((0, info.embedding_dim), np.float32))
        self.version: int | None = None
        self.current = self.trained
        self.refresh()  # a gallery of another model is refused here, at start, in one line

    def refresh(self) -> None:
        if self.gallery is None:
            return
        version = self.gallery.change_counter()
        if version == self.version:
            return
        names, prints = self.gallery.roster(self.info.fingerprint)
        trained_labels, trained_protos = self.trained
        keep = [i for i, label in enumerate(trained_labels) if label not in names]  # enrolled voices win
        labels = tuple(trained_labels[i] for i in keep) + names
        protos = [trained_protos[keep]] + ([prints] if len(names) else [])
        self.current = (labels, np.concatenate(protos).astype(np.float32))
        self.version = version

    def __call__(self) -> tuple[tuple[str, ...], np.ndarray]:
        try:
            self.refresh()
        except GalleryError:
            pass  # keep scoring with the last good roster; the error was shown at start
        return self.current


def decision_threshold(cfg: Config, info: ModelInfo, gallery: Gallery | None) -> float:
    """The threshold in force: the gallery's own calibration for this model where there is one."""
    calibrated = gallery.calibration(info.fingerprint) if gallery is not None else None
    return cfg.threshold_for(info.thresholds, calibrated["threshold"] if calibrated else None)
