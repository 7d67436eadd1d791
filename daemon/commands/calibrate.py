"""`spkrec calibrate`: the gallery's threshold, measured on the user's own voices.

A threshold from the model's training data says little about a door's users, their
microphone and their room. Here the targets are the enrolled speakers' own held-out windows
and the impostors any recordings of other people, scored exactly as the live decider scores
(averaged over the smoothing windows), and the chosen point is stored in the gallery.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from spkrec.daemon.commands import enroll
from spkrec.daemon.commands.common import engine_for
from spkrec.models.audio import audio_files, load_audio
from spkrec.models.calibration import (DoorRule, OpenSetCalibration, VisitCalibration, calibrate_open_set,
                                       calibrate_visits)
from spkrec.models.config import Config
from spkrec.models.engine import Engine
from spkrec.models.errors import AudioError, GalleryError
from spkrec.models.gallery import Gallery


def impostor_windows(engine: Engine, paths: list[Path], cfg: Config, console: Console) -> list[np.ndarray]:
    """Window embeddings of every impostor recording; unreadable or silent files are skipped, and said."""
    files = audio_files(paths)
    if not files:
        raise AudioError(f"no audio files in {', '.join(map(str, paths))}")
    rate, recordings, skipped = engine.info.sample_rate, [], []
    with Progress(console=console, transient=True) as progress:
        for path in progress.track(files, description="impostor recordings"):
            try:
                sample = enroll.gather([load_audio(path, rate)], rate, cfg.vad)
            except AudioError as exc:
                skipped.append(str(exc))
                continue
            if sample.voiced.size:
                recordings.append(enroll.embed(engine, sample))
    for reason in skipped[:5]:
        console.print(f"[yellow]skipped: {reason}[/]")
    if len(skipped) > 5:
        console.print(f"[yellow]skipped {len(skipped) - 5} more unreadable files[/]")
    return recordings


def calibrate(engine: Engine, gallery: Gallery, impostors: list[np.ndarray],
              cfg: Config) -> tuple[OpenSetCalibration, VisitCalibration]:
    """Measure the operating points, per window and per door visit; they are stored in the gallery
    only by the caller, after they are shown."""
    fingerprint = engine.info.fingerprint
    speakers = gallery.speakers()
    if not speakers:
        raise GalleryError(f"no enrolled speakers in {gallery.path}: enroll some first (spkrec enroll)")
    foreign = [s.name for s in speakers if s.fingerprint != fingerprint]
    if foreign:
        raise GalleryError(f"{', '.join(foreign[:3])} were enrolled with another model: re-enroll them first")
    guard = int(np.ceil(engine.info.window_s / engine.info.hop_s))
    windows = {s.name: gallery.windows(s.name) for s in speakers}
    short = [name for name, w in windows.items() if len(w) < guard + 4]
    if short:
        raise GalleryError(f"too little enrolled speech to hold any out for {', '.join(short)}: enroll more "
                           f"(at least {(guard + 4) * engine.info.hop_s + engine.info.window_s:.0f} s voiced each)")
    try:
        windowed = calibrate_open_set(windows, impostors, cfg.calibrate.target_far, cfg.stream.smoothing,
                                      cfg.calibrate.holdout, guard)
        # The door's visitors: its authorised names, or every enrolled voice where no door is set up yet.
        authorised = set(cfg.door.authorized) & set(windows) or set(windows)
        rule = DoorRule(cfg.door.wins, cfg.door.of_last, cfg.stream.smoothing, cfg.decision.margin)
        visits = calibrate_visits(windows, impostors, authorised, windowed.threshold, cfg.calibrate.target_visit_far,
                                  rule, cfg.calibrate.holdout, guard)
        return windowed, visits
    except ValueError as exc:
        raise GalleryError(f"cannot calibrate: {exc}: pass --impostors with recordings of other voices") from None


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.errors import GalleryError
    from spkrec.models.gallery import Gallery

    console = Console(stderr=True)
    engine = engine_for(cfg)
    if not cfg.gallery_path().is_file():
        raise GalleryError(f"no gallery at {cfg.gallery_path()} yet: enroll speakers first (spkrec enroll)")
    gallery = Gallery(cfg.gallery_path())
    impostors = impostor_windows(engine, args.impostors, cfg, console) if args.impostors else []
    result, visits = calibrate(engine, gallery, impostors, cfg)
    table = Table(title=f"calibration of {cfg.gallery_path()} ({len(result.speakers)} speakers, "
                        f"{len(impostors)} impostor recordings)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (("threshold", f"{result.threshold:.3f}"),
                        ("false accepts (FAR)", f"{result.far:.2%}  (target {result.target_far:.2%})"),
                        ("false rejects (FRR)", f"{result.frr:.2%}"),
                        ("EER", f"{result.eer:.2%}"), ("minDCF (p=0.01)", f"{result.min_dcf:.3f}"),
                        ("target / impostor trials", f"{result.n_target} / {result.n_nontarget}"),
                        ("scores averaged over", f"{result.smoothing} windows"),
                        ("door threshold", f"{visits.threshold:.3f}  ({visits.wins} of {visits.of_last} windows)"),
                        ("impostor visits granted", f"{visits.false_grants} of {visits.n_impostor_visits}  "
                                                    f"(target {visits.target:.2%})"),
                        ("own visits refused", f"{visits.false_rejects} of {visits.n_target_visits}")):
        table.add_row(name, value)
    Console().print(table)
    if result.n_nontarget * result.target_far < 10:
        console.print(f"[yellow]only {result.n_nontarget} impostor trials: a {result.target_far:.1%} false-accept "
                      "rate is barely measurable; add more impostor recordings[/]")
    if visits.n_impostor_visits * visits.target < 1:
        console.print(f"[yellow]only {visits.n_impostor_visits} impostor visits: a {visits.target:.1%} false-grant "
                      f"rate needs at least {int(1 / max(visits.target, 1e-9))}; the door threshold is set so none of "
                      "them would be granted[/]")
    if args.dry_run:
        return 0
    gallery.set_calibration(engine.info.fingerprint, {**result.to_dict(), "door": visits.__dict__})
    print(f"stored threshold {result.threshold:.3f} and door threshold {visits.threshold:.3f} in {cfg.gallery_path()} "
          "(used where decision.operating_point is 'auto' or 'calibrated')")
    return 0
