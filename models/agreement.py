"""Does a copy of a model (static int8) give the embeddings of its original on this machine?

ONNX Runtime's int8 kernels differ by CPU: x86 without VNNI multiplies uint8 by int8 with an
instruction whose 16-bit sums saturate, and that alone took the shipped model's int8 copy from
cosine 0.994 to 0.93 of fp32 (README, "int8 on every CPU"). Decision thresholds are calibrated in
fp32, so a copy that drifts is a wrong answer, not a slow one: every copy is checked here, on the
machine that will run it, before it is used.

The check audio is synthesised, not shipped: voiced speech made by additive synthesis (a
glottal-like harmonic source under moving vowel formants, with pitch contours, jitter, breath
noise and pauses), one made-up voice per window. Its spectra and dynamics drive the network's
activations through the ranges speech does, at no licence or size cost, for any sample rate.
"""

from __future__ import annotations

import numpy as np

AGREEMENT = 0.985  # least cosine to fp32 a copy must reach on every check window
WINDOWS = 8
# (F1, F2, F3) of vowels /a e i o u ə/ for an adult male voice; scaled per made-up speaker
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010],
                    [570, 840, 2410], [300, 870, 2240], [500, 1500, 2500]], dtype=np.float64)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def synthetic_voice(rate: int, seconds: float, seed: int) -> np.ndarray:
    """``seconds`` of a made-up voice at ``rate``: syllables of vowels, pauses and breath noise."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    frame = max(1, rate // 100)  # formants and pitch move every 10 ms
    frames = n // frame + 2
    f0_base = rng.uniform(85, 240)
    scale = rng.uniform(0.85, 1.25)  # vocal tract length: formants of this speaker
    t = np.arange(frames) / 100.0
    f0 = f0_base * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6.3))
                    + 0.01 * rng.standard_normal(frames))
    # a syllable every 150-300 ms: a vowel target, a smooth glide between them, some pauses
    targets, onsets, voiced = [], [], []
    at = 0.0
    while at < seconds:
        targets.append(_VOWELS[rng.integers(len(_VOWELS))] * scale)
        onsets.append(at)
        voiced.append(rng.random() > 0.3)
        at += rng.uniform(0.15, 0.3)
    onsets = np.array(onsets)
    idx = np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, len(onsets) - 1)
    formants = np.array(targets)[idx]
    kernel = np.ones(5) / 5  # 50 ms glide between vowel targets
    formants = np.stack([np.convolve(formants[:, i], kernel, mode="same") for i in range(3)], axis=1)
    loudness = np.array(voiced, dtype=np.float64)[idx]
    syllable = (t - onsets[idx]) / np.maximum(np.diff(np.append(onsets, seconds))[idx], 1e-3)
    loudness *= np.sin(np.pi * np.clip(syllable, 0, 1)) ** 0.5  # each syllable swells and fades
    harmonics = np.arange(1, int(rate / 2 / f0.min()))
    freqs = harmonics[:, None] * f0[None, :]  # [H, frames]
    amp = np.zeros_like(freqs)
    for i in range(3):
        amp += 1.0 / (1.0 + ((freqs - formants[None, :, i]) / _BANDWIDTHS[i]) ** 2)
    amp *= (freqs < rate / 2 - 200) / np.sqrt(harmonics[:, None])  # a source tilting down, no aliasing
    samples = np.arange(n) / frame
    f0_s = np.interp(samples, np.arange(frames), f0)
    phase = 2 * np.pi * np.cumsum(f0_s) / rate
    out = np.zeros(n)
    for h in range(len(harmonics)):
        a = np.interp(samples, np.arange(frames), amp[h] * loudness)
        out += a * np.sin(harmonics[h] * phase + rng.uniform(0, 2 * np.pi))
    out /= np.abs(out).max() + 1e-9
    # fricatives: bursts of high-passed noise at some syllable starts; a quiet floor between words
    hiss = np.diff(rng.standard_normal(n + 1))
    fricative = np.interp(samples, np.arange(frames), (syllable < 0.3) * (rng.random(frames) < 0.5) * (1 - loudness))
    out += 0.3 * hiss * np.convolve(fricative, np.ones(frame * 4) / (frame * 4), mode="same")
    out += 3e-4 * rng.standard_normal(n)
    out = out / (np.abs(out).max() + 1e-9) * rng.uniform(0.2, 0.7)
    return out.astype(np.float32)


def check_windows(rate: int, window_samples: int, count: int = WINDOWS) -> np.ndarray:
    """[count, window_samples]: one made-up voice per window, the same on every machine."""
    seconds = window_samples / rate
    return np.stack([synthetic_voice(rate, seconds, seed)[:window_samples] for seed in range(count)])


def min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The least cosine between matching rows of two embedding batches."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    return float(np.sum(a * b, axis=1).min())
