"""Enrollment: voiced speech -> window embeddings -> quality checks -> a voiceprint in the gallery.

The checks run before anything is saved, and each failure says what to do about it, because a
bad voiceprint fails silently later (a door that never opens, or opens for the wrong voice).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from rich.console import Console

from spkrec.daemon.commands.common import engine_for
from spkrec.daemon.pipeline.vad import Vad
from spkrec.models.config import Config, EnrollConfig, VadConfig
from spkrec.models.audio import FULL_SCALE, dbfs
from spkrec.models.clustering import Scales, two_parts
from spkrec.models.engine import Engine
from spkrec.models.errors import AudioError
from spkrec.models.windows import frame_windows

MIN_PART = 0.1  # the smaller part of a two-voice enrollment: a cough or a door slam is less


@dataclass(frozen=True)
class Sample:
    """Voiced speech gathered for one speaker, with what the quality checks need."""

    voiced: np.ndarray  # voiced samples only, at the model rate
    clipped: float  # share of all samples at full scale
    rate: int

    @property
    def voiced_s(self) -> float:
        return self.voiced.size / self.rate

    @property
    def level_db(self) -> float | None:
        """The voiced audio's RMS level (dBFS); None when nothing was voiced."""
        return dbfs(float(np.mean(self.voiced * self.voiced))) if self.voiced.size else None


@dataclass(frozen=True)
class GuestSample:
    """A meeting guest's speech as its guests file describes it: no audio, but its voiced seconds
    and its clipped share and level summed over its windows (None in files written before they
    were recorded: those two checks cannot run)."""

    voiced_s: float
    clipped: float | None
    level_db: float | None


def gather(recordings: list[np.ndarray], rate: int, vad: VadConfig) -> Sample:
    """Keep the voiced frames of every recording (each decoded at the model rate)."""
    voiced, total, clipped = [], 0, 0
    for samples in recordings:
        detector = Vad(rate, vad.frame_ms, vad.aggressiveness)
        voiced += [f.samples for f in detector.frames(samples) if f.voiced]
        total += samples.size
        clipped += int(np.sum(np.abs(samples) >= FULL_SCALE))
    audio = np.concatenate(voiced) if voiced else np.zeros(0, np.float32)
    return Sample(audio, clipped / max(total, 1), rate)


def embed(engine: Engine, sample: Sample) -> np.ndarray:
    """Window embeddings of the voiced audio, at the model's window and hop."""
    info = engine.info
    return engine.embed_windows(frame_windows(sample.voiced, info.window_samples, info.hop_samples))


def same_voice_cosine(checks: EnrollConfig, thresholds: Mapping[str, float]) -> float:
    """``[enroll] same_voice_cosine``, or (0, the default) the model's own centroid scale:
    cosines differ in scale from model to model, so a fixed bar cannot fit all."""
    if checks.same_voice_cosine:
        return checks.same_voice_cosine
    return Scales.of(thresholds).centroid


def problems(sample: Sample | GuestSample, embeddings: np.ndarray | None, checks: EnrollConfig,
             thresholds: Mapping[str, float] | None = None) -> list[str]:
    """Everything wrong with an enrollment, each with its fix; empty when it may be saved."""
    found = []
    if sample.voiced_s < checks.min_voiced_s:
        found.append(f"only {sample.voiced_s:.1f} s of voiced speech, {checks.min_voiced_s:.0f} s needed: "
                     "add recordings or speak longer")
    if sample.clipped is not None and sample.clipped > checks.max_clipped:
        found.append(f"{sample.clipped:.1%} of samples are clipped: lower the input gain")
    if sample.level_db is not None and sample.level_db < checks.min_level_db:
        found.append(f"the voice is too quiet ({sample.level_db:.0f} dBFS): move closer or raise the gain")
    if embeddings is not None and len(embeddings) > 1:
        minor, cosine = two_parts(embeddings)
        needed = same_voice_cosine(checks, thresholds or {})
        if minor >= MIN_PART and cosine < needed:
            found.append(f"the recordings sound like two voices ({minor:.0%} of the speech differs from the rest: "
                         f"cosine {cosine:.2f} < {needed:.2f}): enroll one speaker at a time")
    return found


def check(sample: Sample | GuestSample, embeddings: np.ndarray | None, checks: EnrollConfig,
          thresholds: Mapping[str, float] | None = None) -> None:
    found = problems(sample, embeddings, checks, thresholds)
    if found:
        raise AudioError("enrollment refused: " + "; ".join(found))


def record(device_spec: str, rate: int, seconds: float, vad: VadConfig, block_s: float, console) -> np.ndarray:
    """Capture from a microphone until ``seconds`` of voiced speech are in, with a progress bar."""
    import threading

    from rich.progress import BarColumn, Progress, TextColumn

    from spkrec.daemon.pipeline.devices import resolve
    from spkrec.daemon.pipeline.sources import MicrophoneSource

    source = MicrophoneSource(resolve(device_spec), rate, block_s, queue_s=10.0, reconnect_max_s=2.0,
                              on_status=lambda e: None)
    detector, captured, voiced = Vad(rate, vad.frame_ms, vad.aggressiveness), [], 0.0
    stop = threading.Event()
    columns = [TextColumn("[bold]speak now"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.0f} s voiced")]
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("enroll", total=seconds)
            for block in source.blocks(stop):
                captured.append(block.samples)
                voiced += sum(f.samples.size for f in detector.frames(block.samples) if f.voiced) / rate
                progress.update(task, completed=min(voiced, seconds))
                if voiced >= seconds:
                    break
    finally:
        source.close()
    return np.concatenate(captured) if captured else np.zeros(0, np.float32)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.audio import load_audio
    from spkrec.models.gallery import Gallery, check_name

    check_name(args.name)  # a reserved or malformed name fails before any audio is read
    engine = engine_for(cfg)
    if args.from_guest:
        return _enroll_guest(args, cfg, engine)
    rate = engine.info.sample_rate
    if args.input:
        recordings = [load_audio(path, rate) for path in args.input]
    else:
        seconds = args.seconds or cfg.min_voiced_s
        recordings = [record(args.device, rate, seconds, cfg.vad, cfg.audio.block_s, Console(stderr=True))]
    sample = gather(recordings, rate, cfg.vad)
    check(sample, None, cfg.enroll)
    embeddings = embed(engine, sample)
    check(sample, embeddings, cfg.enroll, engine.info.thresholds)
    speaker = Gallery(cfg.gallery_path()).add(args.name, engine.info.fingerprint, embeddings, sample.voiced_s)
    print(f"enrolled {speaker.name}: {speaker.voiced_s:.1f} s voiced in total, {speaker.windows} windows, "
          f"quality {speaker.quality:.2f} ({cfg.gallery_path()})")
    return 0


def _enroll_guest(args: argparse.Namespace, cfg: Config, engine) -> int:
    """A guest of a labelled meeting saved under a real name: no recording needed, but the same
    checks as one (voiced seconds, clipping, level, one voice), on what the guests file holds
    of the guest's speech: a guest cluster can be a few seconds, or two people."""
    import sys

    from spkrec.daemon.meeting.guests import load_guest
    from spkrec.models.errors import GalleryError
    from spkrec.models.gallery import Gallery

    if args.guests is None:
        raise GalleryError("--from-guest needs --guests FILE (written next to the meeting's RTTM)")
    fingerprint, windows, voiced_s, audio = load_guest(args.guests, args.from_guest)
    if fingerprint != engine.info.fingerprint:
        raise GalleryError(f"{args.guests} was made with another model ({fingerprint}): label the meeting again "
                           "with this model, or enroll with that one")
    if audio is None:
        print(f"spkrec: {args.guests} predates audio levels in guests files: clipping and level not checked",
              file=sys.stderr)
    sample = GuestSample(voiced_s, audio.clipped_share if audio else None, audio.level_db if audio else None)
    check(sample, windows, cfg.enroll, engine.info.thresholds)
    speaker = Gallery(cfg.gallery_path()).add(args.name, fingerprint, windows, voiced_s)
    print(f"enrolled {speaker.name} from {args.from_guest}: {speaker.voiced_s:.1f} s voiced in total, "
          f"{speaker.windows} windows, quality {speaker.quality:.2f} ({cfg.gallery_path()})")
    return 0
