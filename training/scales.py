"""Clustering scales for a model: measured on held-out voices, written into its metadata.

``models.clustering`` explains what the two scales are. Exported models get them at export
(``train.finish``, ``baseexport``); this stamps them into a model that has none (one exported
before they existed, or another encoder wrapped in the contract), from recordings of voices
the model never trained on. Only the metadata changes: the fingerprint hashes the graph, so
voiceprints enrolled with the model stay valid.

    python -m spkrec.training.scales MODEL.onnx --voices DIR/<voice>/*.flac ... [--out NEW.onnx]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import onnx

from spkrec.models.artifact import info_of
from spkrec.models.audio import load_audio
from spkrec.models.clustering import measure_scales
from spkrec.models.engine import Engine
from spkrec.models.windows import frame_windows

from .export import _save_atomically, _stamp


def voice_windows(embed: Callable[[np.ndarray], np.ndarray], voices: Mapping[str, Iterable[np.ndarray]],
                  window: int, hop: int) -> dict[str, np.ndarray]:
    """Window embeddings at ``hop`` of each voice's recordings, in order: what measure_scales takes."""
    out = {}
    for voice, recordings in voices.items():
        windows = [frame_windows(audio, window, hop) for audio in recordings if audio.size >= window]
        parts = [embed(w[i:i + 16]) for w in windows for i in range(0, len(w), 16)]
        if parts:
            out[voice] = np.concatenate(parts)
    return out


def stamp_scales(model_path: Path, voices: Mapping[str, list[Path]], out: Path) -> dict[str, float]:
    engine = Engine(model_path, "cpu")
    info = engine.info
    audio = {v: [load_audio(p, info.sample_rate) for p in paths] for v, paths in voices.items()}
    per_voice = voice_windows(engine.embed, audio, info.window_samples, info.hop_samples)
    scales = measure_scales(per_voice)
    model = onnx.load(str(model_path))
    info = info_of(model, model_path)
    training = {**info.training, "clustering_scales": {"voices": len(per_voice), "measured_on": sorted(per_voice)}}
    stamped = dataclasses.replace(info, thresholds={**info.thresholds, **scales}, training=training)
    _stamp(model, stamped)
    _save_atomically(model, out)
    return scales


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spkrec.training.scales", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--voices", type=Path, nargs="+", required=True,
                        help="recordings, one folder per voice (<voice>/<file>): voices the model never trained on")
    parser.add_argument("--out", type=Path, help="where to write the stamped model (default: in place)")
    args = parser.parse_args(argv)
    voices: dict[str, list[Path]] = {}
    for path in args.voices:
        voices.setdefault(path.parent.name, []).append(path)
    scales = stamp_scales(args.model, voices, args.out or args.model)
    print(json.dumps({k: round(v, 4) for k, v in scales.items()}), f"from {len(voices)} voices ->",
          args.out or args.model)


if __name__ == "__main__":
    main()
