"""`spkrec verify NAME FILE`: accept (exit 0) or reject (exit 1) a claimed identity.

The file's voiced audio is embedded in one pass (models/utterance.py) and held to the threshold
`spkrec calibrate` measured for whole files: the cosine of a mean of windows runs higher than
the windows' own, so a window threshold would accept more impostors than it promises."""

from __future__ import annotations

import argparse

from spkrec.models.config import Config

from .common import engine_for


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.commands import enroll
    from spkrec.models.audio import load_audio
    from spkrec.models.errors import AudioError, GalleryError
    from spkrec.models.gallery import Gallery
    from spkrec.models.thresholds import UTTERANCE, decision_point
    from spkrec.models.utterance import embed_utterance

    engine = engine_for(cfg)
    if not cfg.gallery_path().is_file():
        raise GalleryError(f"no gallery at {cfg.gallery_path()} yet: enroll {args.name} first (spkrec enroll)")
    gallery = Gallery(cfg.gallery_path())
    speaker = gallery.get(args.name)
    if speaker.fingerprint != engine.info.fingerprint:
        raise GalleryError(f"'{args.name}' was enrolled with another model ({speaker.fingerprint}): re-enroll, or "
                           "verify with that model")
    sample = enroll.gather([load_audio(args.file, engine.info.sample_rate)], engine.info.sample_rate, cfg.vad)
    if sample.voiced.size == 0:
        raise AudioError(f"{args.file} has no voiced speech to verify")
    score = float(embed_utterance(engine, sample.voiced) @ speaker.voiceprint)
    threshold = decision_point(cfg, engine.info, gallery, UTTERANCE).threshold
    accepted = score >= threshold
    print(f"{'accept' if accepted else 'reject'}: {args.file} as {args.name}, score {score:.3f}, threshold {threshold:.3f}")
    return 0 if accepted else 1
