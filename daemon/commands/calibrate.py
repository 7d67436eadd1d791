"""`spkrec calibrate`: the gallery's thresholds, measured on the user's own voices.

A threshold from the model's training data says little about a door's users, their
microphone and their room. Three kinds of score are calibrated, each the way it is decided:

- windows (live labels): the enrolled speakers' held-out windows and the impostor recordings'
  windows, averaged over the smoothing windows as the live decider does;
- whole files in one pass (identify, verify): each impostor recording embedded as they embed a
  file, against every voiceprint;
- each door of the config: every impostor recording replayed through the live pipeline with the
  door's own visit code (daemon/door/replay.py), one threshold per door rule.

They are stored in the gallery; a running daemon picks them up at its next window (it polls the
gallery), and says so.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from spkrec.daemon.commands import enroll
from spkrec.daemon.commands.common import engine_for
from spkrec.daemon.door.config import DoorConfig, door_for, rule_key, rule_of
from spkrec.daemon.door.replay import critical, visits
from spkrec.daemon.pipeline.roster import Roster
from spkrec.models.audio import audio_files, load_audio
from spkrec.models.calibration import (OpenSetCalibration, UtteranceCalibration, VisitCalibration, calibrate_door,
                                       calibrate_open_set, calibrate_utterances)
from spkrec.models.config import Config
from spkrec.models.engine import Engine
from spkrec.models.errors import AudioError, GalleryError
from spkrec.models.gallery import Gallery
from spkrec.models.scoring import cosine_scores
from spkrec.models.utterance import embed_utterance


@dataclass(frozen=True)
class Impostor:
    """One recording of a voice nobody enrolled, as each kind of decision sees it."""

    path: Path
    windows: np.ndarray  # window embeddings, as the live decider scores
    utterance: np.ndarray  # the one-pass embedding, as identify and verify score


def impostor_recordings(engine: Engine, paths: list[Path], cfg: Config, console: Console) -> list[Impostor]:
    """Every impostor recording embedded; unreadable or silent files are skipped, and said."""
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
                recordings.append(Impostor(path, enroll.embed(engine, sample), embed_utterance(engine, sample.voiced)))
    for reason in skipped[:5]:
        console.print(f"[yellow]skipped: {reason}[/]")
    if len(skipped) > 5:
        console.print(f"[yellow]skipped {len(skipped) - 5} more unreadable files[/]")
    return recordings


def doors_of(cfg: Config) -> dict[str, DoorConfig]:
    """Every door the config sets up (the global one, each input's), by rule key: doors with the
    same rule share one calibration."""
    doors = [cfg.door] + [door_for(cfg, name) for name in cfg.inputs]
    return {rule_key(rule_of(d, cfg.decision.margin)): d for d in doors if d.authorized}


def calibrate_doors(engine: Engine, gallery: Gallery, impostors: list[Impostor], cfg: Config,
                    console: Console) -> dict[str, VisitCalibration]:
    """Each door's threshold from the impostor recordings replayed through its visit code."""
    doors = doors_of(cfg)
    if not doors:
        return {}
    roster = Roster(engine.info, gallery, cfg.decision.trained_speakers)
    replays: dict[tuple, list] = {}  # doors that hear visits alike share the replays
    results = {}
    with Progress(console=console, transient=True) as progress:
        for key, door in doors.items():
            heard = (door.visit_s, door.every_s, door.max_visit_s)
            if heard not in replays:
                replays[heard] = [attempt for r in progress.track(impostors, description="impostor visits")
                                  for attempt in visits(engine, r.path, roster, door, cfg)]
            criticals = [critical(attempt, door, cfg.decision.margin) for attempt in replays[heard]]
            results[key] = calibrate_door(criticals, cfg.calibrate.target_visit_far, rule_of(door, cfg.decision.margin))
    return results


def calibrate(engine: Engine, gallery: Gallery, impostors: list[Impostor], cfg: Config,
              console: Console) -> tuple[OpenSetCalibration, UtteranceCalibration | None, dict[str, VisitCalibration]]:
    """Measure the operating points; they are stored in the gallery only by the caller, after
    they are shown."""
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
        windowed = calibrate_open_set(windows, [r.windows for r in impostors], cfg.calibrate.target_far,
                                      cfg.stream.smoothing, cfg.calibrate.holdout, guard)
    except ValueError as exc:
        raise GalleryError(f"cannot calibrate: {exc}: pass --impostors with recordings of other voices") from None
    files = None
    if impostors:
        prints = np.stack([s.voiceprint for s in speakers])
        files = calibrate_utterances(cosine_scores(np.stack([r.utterance for r in impostors]), prints),
                                     cfg.calibrate.target_far)
    return windowed, files, calibrate_doors(engine, gallery, impostors, cfg, console)


def _table(cfg: Config, result: OpenSetCalibration, files: UtteranceCalibration | None,
           doors: dict[str, VisitCalibration], impostors: int) -> Table:
    table = Table(title=f"calibration of {cfg.gallery_path()} ({len(result.speakers)} speakers, "
                        f"{impostors} impostor recordings)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("window threshold (live labels)", f"{result.threshold:.3f}"),
            ("false accepts (FAR)", f"{result.far:.2%}  (target {result.target_far:.2%})"),
            ("false rejects (FRR)", f"{result.frr:.2%}"),
            ("EER", f"{result.eer:.2%}"), ("minDCF (p=0.01)", f"{result.min_dcf:.3f}"),
            ("target / impostor trials", f"{result.n_target} / {result.n_nontarget}"),
            ("scores averaged over", f"{result.smoothing} windows")]
    if files is not None:
        rows += [("file threshold (identify, verify)", f"{files.threshold:.3f}"),
                 ("file false accepts", f"{files.far:.2%} of {files.n_nontarget}  (target {files.target_far:.2%})")]
    for door in doors.values():
        who = ", ".join(door.rule["authorized"])
        rows += [(f"door threshold ({who})", f"{door.threshold:.3f}"),
                 ("impostor visits granted", f"{door.false_grants} of {door.n_impostor_visits}  "
                                             f"(target {door.target:.2%})")]
    for name, value in rows:
        table.add_row(name, value)
    return table


def run(args: argparse.Namespace, cfg: Config) -> int:
    console = Console(stderr=True)
    engine = engine_for(cfg)
    if not cfg.gallery_path().is_file():
        raise GalleryError(f"no gallery at {cfg.gallery_path()} yet: enroll speakers first (spkrec enroll)")
    gallery = Gallery(cfg.gallery_path())
    impostors = impostor_recordings(engine, args.impostors, cfg, console) if args.impostors else []
    result, files, doors = calibrate(engine, gallery, impostors, cfg, console)
    Console().print(_table(cfg, result, files, doors, len(impostors)))
    if result.n_nontarget * result.target_far < 10:
        console.print(f"[yellow]only {result.n_nontarget} impostor trials: a {result.target_far:.1%} false-accept "
                      "rate is barely measurable; add more impostor recordings[/]")
    for door in doors.values():
        if door.n_impostor_visits * door.target < 1:
            console.print(f"[yellow]only {door.n_impostor_visits} impostor visits: a {door.target:.1%} false-grant "
                          f"rate needs at least {int(1 / max(door.target, 1e-9))}; the door threshold is set so none "
                          "of them would be granted[/]")
    if cfg.door.authorized and not impostors:
        console.print("[yellow]no --impostors: the doors keep the window threshold, not one measured on visits[/]")
    if args.dry_run:
        return 0
    record = {**result.to_dict(), **({"utterance": files.to_dict()} if files is not None else {}),
              "doors": {key: door.to_dict() for key, door in doors.items()}}
    gallery.set_calibration(engine.info.fingerprint, record)
    print(f"stored in {cfg.gallery_path()}: window threshold {result.threshold:.3f}"
          + (f", file threshold {files.threshold:.3f}" if files is not None else "")
          + "".join(f", door threshold {d.threshold:.3f} ({', '.join(d.rule['authorized'])})" for d in doors.values())
          + ". Used where decision.operating_point is 'auto' or 'calibrated'; a running daemon picks them up "
          "at its next window (it watches the gallery) and says so in a 'threshold' status event.")
    return 0
