"""Decoding audio files into what every model consumes: mono float32 at the model's rate.

Training, evaluation, identification and the file source all decode through here, so the
samples a model was trained on and the samples it serves are made the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")

# Peak below which a whole recording counts as silent (about -60 dBFS): digital silence and
# hiss-only files carry no voice to learn from or to score.
SILENCE_PEAK = 1e-3
FULL_SCALE = 0.999  # a sample this loud or louder is clipped


def dbfs(mean_square: float) -> float:
    """An RMS level in dB relative to full scale (floored at -120 dBFS)."""
    return 20 * float(np.log10(max(float(np.sqrt(mean_square)), 1e-6)))


@dataclass(frozen=True)
class AudioTally:
    """What enrollment's quality checks (clipping, level) need of a voice's audio, summed window
    by window: a meeting's guests file keeps embeddings, not audio, yet a guest enrolled from it
    must pass the same checks as a recording. Overlapping windows count a sample several times;
    the clipped share and the level are ratios, unchanged by that."""

    samples: int = 0  # every sample of the windows
    clipped: int = 0  # at full scale
    voiced: int = 0  # voiced samples
    energy: float = 0.0  # the sum of the voiced samples' squares

    @classmethod
    def of(cls, samples: np.ndarray, voiced_mask: np.ndarray) -> AudioTally:
        voiced = samples[voiced_mask].astype(np.float64)
        return cls(int(samples.size), int(np.sum(np.abs(samples) >= FULL_SCALE)), int(voiced.size),
                   float(voiced @ voiced))

    def __add__(self, other: AudioTally) -> AudioTally:
        return AudioTally(self.samples + other.samples, self.clipped + other.clipped, self.voiced + other.voiced,
                          self.energy + other.energy)

    @property
    def clipped_share(self) -> float:
        return self.clipped / max(self.samples, 1)

    @property
    def level_db(self) -> float | None:
        """The voiced audio's RMS level (dBFS); None when nothing was voiced."""
        return dbfs(self.energy / self.voiced) if self.voiced else None


def audio_files(paths: list[Path]) -> list[Path]:
    """Files as given, and every audio file under each folder (symlinks followed), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            for folder, _, names in os.walk(path, followlinks=True):
                found += sorted(Path(folder) / n for n in names if Path(n).suffix.lower() in AUDIO_EXTENSIONS)
        elif path.exists():
            found.append(path)
        else:
            raise AudioError(f"{path} does not exist")
    return sorted(found)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels: a stereo meeting recording becomes one stream."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """High-quality resampling (libsoxr); a no-op when the rates already match."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, rate: int) -> np.ndarray:
    """Decode any soundfile-readable file to mono float32 at ``rate``.

    Raises AudioError, naming the file, when it cannot be decoded or is empty, so callers
    can skip or report it instead of crashing.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        samples, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"cannot decode {path}: {reason}") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path} holds no audio samples")
    return resample(to_mono(samples), int(file_rate), rate)


def is_silent(samples: np.ndarray) -> bool:
    """True when nothing in the recording rises above the silence floor."""
    return samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK


def pcm16_to_float(raw: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes to float32 in [-1, 1)."""
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] to little-endian 16-bit PCM bytes (what webrtcvad reads)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
