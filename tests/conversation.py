"""Conversations of real speech with known turns, and how well a run's events match them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from spkrec.models.audio import load_audio

GAP_S = 2.5


def build(run_dir: Path, out: Path, rate: int = 16000) -> list[tuple[float, float, str]]:
    """A 16 kHz WAV of the run's held-out validation files, speakers taking turns with pauses."""
    split = json.loads((run_dir / "split.json").read_text())
    by_label: dict[str, list[str]] = {}
    for row in split["validation"]:
        by_label.setdefault(row["label"], []).append(row["path"])
    order = [(by_label[label][i], label) for i in range(min(map(len, by_label.values()))) for label in sorted(by_label)]
    return assemble(order, out, rate)


def assemble(order: list[tuple[str | Path, str]], out: Path, rate: int = 16000,
             gap_s: float = GAP_S) -> list[tuple[float, float, str]]:
    """Write the files of ``order`` (path, label) one after another with pauses; returns the turns."""
    parts, turns, cursor = [], [], 0
    gap = np.zeros(int(gap_s * rate), np.float32)
    for path, label in order:
        speech = load_audio(path, rate)
        turns.append((cursor / rate, (cursor + speech.size) / rate, label))
        parts += [speech, gap]
        cursor += speech.size + gap.size
    sf.write(out, np.concatenate(parts), rate, subtype="PCM_16")
    return turns


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def speaker_agreement(events: list[dict], turns, offset: float = 0.0, slack: float = 0.3) -> tuple[int, int]:
    """(windows labelled with the right speaker, windows lying wholly inside one turn)."""
    right = total = 0
    for e in events:
        if e["event"] != "speaker":
            continue
        start, end = e["start"] - offset, e["end"] - offset
        turn = next((t for t in turns if t[0] - slack <= start and end <= t[1] + slack), None)
        if turn is not None:
            total += 1
            right += e["label"] == turn[2]
    return right, total


def silences_in_gaps(events: list[dict], turns, offset: float = 0.0, window_s: float = 2.0) -> int:
    """How many pauses between turns were reported by a silence event."""
    found = 0
    for (_, gap_start, _), (next_start, _, _) in zip(turns, turns[1:]):
        if any(e["event"] == "silence" and gap_start <= e["end"] - offset <= next_start + window_s for e in events):
            found += 1
    return found


def turn_labels(events: list[dict], turns, offset: float = 0.0) -> list[str]:
    """The majority label of the windows inside each turn: a conversation's label sequence."""
    labels = []
    for start, end, _ in turns:
        inside = [e["label"] for e in events if e["event"] == "speaker" and start - 0.3 <= e["start"] - offset
                  and e["end"] - offset <= end + 0.3]
        # a tie goes to the first label in sorted order, not to set order (which changes with the
        # process's hash seed and made the same events read differently from one run to the next)
        labels.append(max(sorted(set(inside)), key=inside.count) if inside else "")
    return labels


def channel(audio: np.ndarray, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """One session's room and microphone: reverberation, a band limit, a gain and noise."""
    rt60 = rng.uniform(0.2, 0.7)
    n = int(rt60 * rate)
    impulse = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    impulse[0] = 1.0 / rng.uniform(0.3, 1.0)  # the direct path, stronger the nearer the talker
    wet = np.convolve(audio, impulse / np.linalg.norm(impulse))[:audio.size]
    taps = int(rng.integers(1, 6))  # a moving average: 1 = full band, 5 = about 3 kHz
    wet = np.convolve(wet, np.ones(taps) / taps, mode="same")
    wet = wet - np.convolve(wet, np.ones(160) / 160, mode="same") * rng.uniform(0.0, 1.0)  # a weak or strong high-pass
    wet *= rng.uniform(0.3, 1.0) * 0.25 / max(float(np.sqrt(np.mean(wet ** 2))), 1e-6) / 4
    snr = rng.uniform(15, 30)
    noise = rng.standard_normal(wet.size) * np.sqrt(np.mean(wet ** 2)) / 10 ** (snr / 20)
    return np.clip(wet + noise, -1, 1).astype(np.float32)
