"""`spkrec scales MODEL --voices DIR`: measure a model's clustering scales and stamp them in.

Meetings cluster on two thresholds the model carries (models/clustering.py). Export measures
them; a model from elsewhere (another encoder wrapped in the contract, one exported before they
existed, or a training set with too few voices to measure them) gets them here, from recordings
of voices it never trained on. Only the metadata changes: the fingerprint hashes the graph, so
voiceprints enrolled with the model stay valid."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from spkrec.models.config import Config
from spkrec.models.errors import DataError, ModelError


def voice_folders(root: Path) -> dict[str, list[Path]]:
    """DIR/<voice>/<audio files, any depth>: {voice: files}, voices with no audio left out."""
    from spkrec.models.audio import audio_files

    if not root.is_dir():
        raise DataError(f"--voices {root}: not a folder (it holds one folder of recordings per voice)")
    voices = {d.name: audio_files([d]) for d in sorted(root.iterdir()) if d.is_dir()}
    voices = {v: files for v, files in voices.items() if files}
    if len(voices) < 2:
        raise DataError(f"--voices {root}: {len(voices)} folder(s) of audio; clustering scales need two or more "
                        "voices, one folder each (DIR/<voice>/<files>)")
    return voices


def stamp_scales(model_path: Path, voices: dict[str, list[Path]], out: Path) -> dict[str, float]:
    """Measure both scales on ``voices`` with the model itself and write the stamped model to ``out``."""
    import onnx

    from spkrec.models.artifact import info_of, save_atomically, stamp
    from spkrec.models.audio import load_audio
    from spkrec.models.clustering import measure_scales, voice_windows
    from spkrec.models.engine import Engine

    engine = Engine(model_path, "cpu")
    info = engine.info
    audio = {v: [load_audio(p, info.sample_rate) for p in paths] for v, paths in voices.items()}
    per_voice = voice_windows(engine.embed, audio, info.window_samples, info.hop_samples)
    try:
        scales = measure_scales(per_voice)
    except ValueError as exc:
        raise DataError(f"{exc} (--voices)") from None
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises its own DecodeError / OSError variants
        raise ModelError(f"{model_path}: cannot be read as ONNX ({exc})") from None
    info = info_of(model, model_path)
    training = {**info.training, "clustering_scales": {"voices": len(per_voice), "measured_on": sorted(per_voice)}}
    stamp(model, dataclasses.replace(info, thresholds={**info.thresholds, **scales}, training=training))
    save_atomically(model, out)
    return scales


def run(args: argparse.Namespace, cfg: Config) -> int:
    out = args.out or args.model
    scales = stamp_scales(args.model, voice_folders(args.voices), out)
    print(json.dumps({k: round(v, 4) for k, v in scales.items()}), f"from the voices in {args.voices} ->", out)
    return 0
