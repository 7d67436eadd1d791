"""Voice activity: webrtcvad on fixed frames, plus the level the UI meters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from spkrec.models.audio import float_to_pcm16
from spkrec.models.errors import ConfigError

VAD_RATES = (8000, 16000, 32000, 48000)


@dataclass(frozen=True)
class Frame:
    samples: np.ndarray
    voiced: bool
    level_db: float  # RMS in dBFS


class Vad:
    """Cuts a stream of blocks into VAD frames and labels each voiced or not."""

    def __init__(self, rate: int, frame_ms: int, aggressiveness: int) -> None:
        if rate not in VAD_RATES:
            raise ConfigError(f"webrtcvad needs a model rate of {VAD_RATES}, the model runs at {rate} Hz")
        self.rate, self.frame = rate, rate * frame_ms // 1000
        self.vad = webrtcvad.Vad(aggressiveness)
        self.pending = np.zeros(0, np.float32)

    def frames(self, samples: np.ndarray) -> list[Frame]:
        self.pending = np.concatenate([self.pending, samples])
        n = self.pending.size // self.frame
        out = []
        for i in range(n):
            chunk = self.pending[i * self.frame : (i + 1) * self.frame]
            rms = float(np.sqrt(np.mean(chunk * chunk)))
            level = 20 * np.log10(max(rms, 1e-6))
            out.append(Frame(chunk, self.vad.is_speech(float_to_pcm16(chunk), self.rate), level))
        self.pending = self.pending[n * self.frame :]
        return out
