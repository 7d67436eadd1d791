"""Datasets: finding labelled audio, decoding it once, splitting it, and cutting training crops.

Two layouts are read: a folder per speaker (``DATA/<speaker>/**/*.wav``, label = first-level
folder) and a CSV manifest (``path,label``, paths relative to the CSV file).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from spkrec.models.audio import AUDIO_EXTENSIONS, is_silent, load_audio
from spkrec.models.errors import AudioError, DataError


@dataclass(frozen=True)
class Item:
    """One labelled file, before decoding."""

    path: Path
    label: str


@dataclass(eq=False)
class Clip:
    """One decoded file: mono float32 samples at the model rate."""

    path: Path
    label: str
    samples: np.ndarray


def discover(source: str | Path) -> list[Item]:
    """Labelled files from a speaker-folder tree or a CSV manifest, in a stable order."""
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() == ".csv":
        items = _from_csv(source)
    elif source.is_dir():
        items = _from_folders(source)
    elif source.exists():
        raise DataError(f"{source} is neither a folder of speaker folders nor a .csv manifest")
    else:
        raise DataError(f"dataset not found: {source}")
    if not items:
        raise DataError(
            f"no audio found in {source}: expected <speaker>/<file>{'|'.join(AUDIO_EXTENSIONS)} folders "
            "or a CSV with path,label rows"
        )
    return sorted(items, key=lambda item: (item.label, str(item.path)))


def _from_folders(root: Path) -> list[Item]:
    items = []
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(speaker_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                items.append(Item(path, speaker_dir.name))
    return items


def _from_csv(manifest: Path) -> list[Item]:
    items = []
    with manifest.open(newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].strip().startswith("#"):
                continue
            if line_no == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{manifest}:{line_no}: expected 'path,label', got {','.join(row)!r}")
            path = Path(row[0].strip())
            items.append(Item(path if path.is_absolute() else (manifest.parent / path).resolve(), row[1].strip()))
    return items


def _cache_path(cache: Path, path: Path, rate: int) -> Path:
    """Keyed by the file's identity and the target rate: an edited or replaced file misses."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{rate}"
    return cache / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"


def load_cached(path: Path, rate: int, cache: Path | None) -> np.ndarray:
    """Decoded samples, from the cache when this file was decoded before (memory-mapped, so
    DataLoader workers and the other DDP ranks share one copy), else decoded and stored."""
    if cache is None or not path.is_file():
        return load_audio(path, rate)
    stored = _cache_path(cache, path, rate)
    if stored.is_file():
        try:
            return np.load(stored, mmap_mode="r")
        except (OSError, ValueError):  # a damaged entry is decoded again below
            pass
    samples = load_audio(path, rate)
    cache.mkdir(parents=True, exist_ok=True)
    partial = stored.with_name(f"{stored.stem}.{os.getpid()}.partial.npy")
    np.save(partial, samples)
    partial.replace(stored)
    return np.load(stored, mmap_mode="r")


def decode(items: list[Item], rate: int, progress: Callable[[Item], None] | None = None,
           warn: Callable[[str], None] = print, cache: Path | None = None) -> list[Clip]:
    """Decode every file once; unreadable, empty or silent files are skipped with a warning.

    With ``cache`` (a folder), decoded audio is kept there as float32 .npy, so a resumed run, a
    second run on the same data and every DDP rank after the first read it instead of decoding.
    """
    clips, skipped = [], 0
    for item in items:
        try:
            samples = load_cached(item.path, rate, cache)
            if is_silent(samples):
                raise AudioError(f"{item.path} is silent")
            clips.append(Clip(item.path, item.label, samples))
        except AudioError as exc:
            skipped += 1
            warn(f"skipped: {exc}")
        if progress:
            progress(item)
    if skipped:
        warn(f"skipped {skipped} of {len(items)} files that could not be used")
    return clips


def require_speakers(clips: list[Clip], minimum: int = 2) -> list[str]:
    """Sorted labels, or a DataError when fewer than ``minimum`` speakers have usable audio."""
    labels = sorted({c.label for c in clips})
    if len(labels) < minimum:
        raise DataError(f"need at least {minimum} speakers with usable audio, found {len(labels)}: {', '.join(labels) or 'none'}")
    return labels


def split(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Stratified split by file: each speaker with two or more files keeps at least one for training."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        by_label[clip.label].append(clip)
    train, val = [], []
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n_val = min(len(group) - 1, int(round(val_fraction * len(group)))) if val_fraction > 0 else 0
        if val_fraction > 0 and len(group) >= 2:
            n_val = max(n_val, 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def voices_to_hold(speakers: int, setting: int) -> int:
    """How many whole voices to keep out of training for open-set model selection: ``setting``,
    or (-1) 5 % of the speakers, 4 to 16, once there are 20 or more (fewer is a closed set:
    every voice is needed for training and its own held-out files judge it)."""
    if setting >= 0:
        return setting
    return 0 if speakers < 20 else min(16, max(4, round(0.05 * speakers)))


def hold_out_voices(train: list[Clip], val: list[Clip], count: int,
                    seed: int) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """(train, val, held-out voices): ``count`` speakers, chosen by seed, with all their files."""
    labels = sorted({c.label for c in train + val})
    if count >= len(labels) - 1:
        raise DataError(f"train.val_voices = {count} would leave fewer than two speakers to train on")
    held = set(np.random.default_rng(seed).choice(labels, size=count, replace=False).tolist())
    return ([c for c in train if c.label not in held], [c for c in val if c.label not in held],
            [c for c in train + val if c.label in held])


def write_split(path: Path, train: list[Clip], val: list[Clip]) -> None:
    """Record which file went where, so a run can be audited and reproduced."""
    def rows(clips: list[Clip]) -> list[dict]:
        return [{"path": str(c.path), "label": c.label} for c in clips]

    path.write_text(json.dumps({"train": rows(train), "validation": rows(val)}, indent=1))


def summary(clips: list[Clip], rate: int) -> dict:
    """Speakers, files and seconds: what the model was trained on, for its metadata."""
    seconds: Counter = Counter()
    files: Counter = Counter()
    for clip in clips:
        seconds[clip.label] += clip.samples.size / rate
        files[clip.label] += 1
    return {
        "speakers": len(files),
        "files": sum(files.values()),
        "seconds": round(sum(seconds.values()), 1),
        "per_speaker": {k: {"files": files[k], "seconds": round(seconds[k], 1)} for k in sorted(files)},
    }


def crops_per_epoch(clips: list[Clip], window: int) -> list[int]:
    """Clip indices, each repeated once per window of its audio: an epoch covers each file once."""
    return [i for i, c in enumerate(clips) for _ in range(max(1, int(round(c.samples.size / window))))]


def epoch_batches(clips: list[Clip], window: int, batch_size: int, seed: int, epoch: int) -> Iterator[list[tuple[int, int]]]:
    """Shuffled (clip index, crop offset) batches for one epoch, reproducible from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    entries = np.array(crops_per_epoch(clips, window))
    entries = entries[rng.permutation(len(entries))]
    full = len(entries) // batch_size * batch_size or len(entries)  # drop a ragged last batch
    for start in range(0, full, batch_size):
        batch = []
        for index in entries[start : start + batch_size]:
            room = clips[index].samples.size - window
            batch.append((int(index), int(rng.integers(0, room + 1)) if room > 0 else 0))
        yield batch


def steps_per_epoch(clips: list[Clip], window: int, batch_size: int) -> int:
    n = len(crops_per_epoch(clips, window))
    return max(1, n // batch_size)


def epochs_needed(epochs: int, min_steps: int, per_epoch: int) -> int:
    """The configured epochs, raised until at least ``min_steps`` optimisation steps run."""
    return max(epochs, math.ceil(min_steps / per_epoch))
