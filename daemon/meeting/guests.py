"""The guests file of a labelled meeting: the windows of every voice nobody enrolled, so a guest
can be enrolled under a real name afterwards (`spkrec enroll NAME --from-guest LABEL`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from spkrec.models.audio import AudioTally
from spkrec.models.errors import GalleryError
from spkrec.models.private import write_private

Guest = tuple[str, np.ndarray, float, AudioTally]  # label, window embeddings, voiced seconds, audio


def save_guests(path: Path, fingerprint: str, guests: Sequence[Guest]) -> None:
    """(label, window embeddings, voiced seconds, audio tally) per guest: what enrolling one later
    needs, its quality checks included. Voiceprints of people who never agreed to enrol: written
    owner-only, atomically."""
    data = {"spkrec_guests": 1, "fingerprint": fingerprint,
            "guests": [{"label": label, "voiced_s": round(float(voiced_s), 2),
                        "audio": {"samples": audio.samples, "clipped": audio.clipped, "voiced": audio.voiced,
                                  "energy": round(audio.energy, 6)},
                        "windows": np.asarray(windows, np.float32).round(6).tolist()}
                       for label, windows, voiced_s, audio in guests]}
    write_private(path, json.dumps(data))


def load_guest(path: Path, label: str) -> tuple[str, np.ndarray, float, AudioTally | None]:
    """(model fingerprint, window embeddings, voiced seconds, audio tally) of one guest in a saved
    meeting; the tally is None in files written before guests carried one."""
    try:
        data = json.loads(Path(path).read_text())
        guests = {g["label"]: g for g in data["guests"]}
        fingerprint = data["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GalleryError(f"{path} is not a spkrec guests file ({exc})") from None
    if label not in guests:
        raise GalleryError(f"no '{label}' in {path} (it has: {', '.join(guests) or 'no guests'})")
    guest = guests[label]
    try:
        audio = AudioTally(**guest["audio"]) if "audio" in guest else None
    except TypeError as exc:
        raise GalleryError(f"{path}: '{label}' has a damaged audio tally ({exc})") from None
    return fingerprint, np.asarray(guest["windows"], np.float32), float(guest["voiced_s"]), audio
