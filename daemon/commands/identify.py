"""File-level identification: the voiced audio of a file embedded in one pass, scored once.

The file goes through the same VAD as enrollment and the live daemon (``enroll.gather``) and is
embedded whole (models/utterance.py: one pass, or equal pieces of at most 8 s averaged), as
`spkrec verify` does, against the threshold calibrated for this kind of score.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spkrec.daemon.commands.common import engine_for, warning
from spkrec.daemon.commands.enroll import gather
from spkrec.daemon.pipeline.roster import Roster
from spkrec.models.audio import is_silent, load_audio
from spkrec.models.config import Config, VadConfig
from spkrec.models.engine import Engine
from spkrec.models.errors import AudioError
from spkrec.models.scoring import Decision, cosine_scores, decide
from spkrec.models.utterance import embed_utterance


@dataclass(frozen=True)
class FileResult:
    path: Path
    decision: Decision | None
    seconds: float
    error: str | None = None

    def as_dict(self) -> dict:
        if self.decision is None:
            return {"file": str(self.path), "error": self.error}
        d = self.decision
        return {"file": str(self.path), "label": d.label, "score": round(d.score, 4), "seconds": round(self.seconds, 2),
                "candidates": [[name, round(score, 4)] for name, score in d.candidates]}


def identify_file(engine: Engine, roster: Roster, path: Path, threshold: float, margin: float,
                  vad: VadConfig) -> FileResult:
    """One file -> best label (or unknown) with its score and runners-up; errors are results."""
    info = engine.info
    try:
        samples = load_audio(path, info.sample_rate)
        if is_silent(samples):
            raise AudioError(f"{path} is silent: nothing to identify")
        sample = gather([samples], info.sample_rate, vad)
        if sample.voiced.size == 0:
            raise AudioError(f"{path} has no voiced speech to identify")
    except AudioError as exc:
        return FileResult(path, None, 0.0, str(exc))
    labels, prototypes = roster()
    scores = cosine_scores(embed_utterance(engine, sample.voiced), prototypes)
    return FileResult(path, decide(scores, labels, threshold, margin), samples.size / info.sample_rate)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.pipeline.roster import Roster, open_gallery, skipped_voices
    from spkrec.models.thresholds import UTTERANCE, decision_point

    files = list(args.files)
    if not cfg.model.path and files and files[0].suffix == ".onnx" and len(files) > 1:
        cfg.model.path = str(files.pop(0))
    engine = engine_for(cfg)
    gallery = open_gallery(cfg)
    skipped = skipped_voices(gallery, engine.info.fingerprint)
    if skipped:
        warning(skipped)
    roster = Roster(engine.info, gallery, cfg.decision.trained_speakers)
    point = decision_point(cfg, engine.info, gallery, UTTERANCE)
    if point.calibrated and not point.fits:  # calibrated before files had a point of their own
        warning(f"threshold {point.threshold:.3f} is the gallery's {point.source}: run spkrec calibrate "
                "--impostors ... again (README, Open-set decisions and calibration)")
    threshold = point.threshold
    results = [identify_file(engine, roster, path, threshold, cfg.decision.margin, cfg.vad) for path in files]
    if args.json:
        for result in results:
            print(json.dumps(result.as_dict()))
    else:
        _print_identify(results, threshold)
    failures = [r for r in results if r.error]
    for r in failures:
        print(f"spkrec: error: {r.error}", file=sys.stderr)
    return 1 if failures else 0


def _print_identify(results, threshold: float) -> None:
    table = Table(title=f"identify (threshold {threshold:.3f})")
    for column in ("file", "speaker", "score", "runner-up"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for r in results:
        if r.decision is None:
            continue
        d = r.decision
        runner = f"{d.candidates[1][0]} {d.candidates[1][1]:.3f}" if len(d.candidates) > 1 else "-"
        table.add_row(r.path.name, d.label, f"{d.score:.3f}", runner)
    Console().print(table)
