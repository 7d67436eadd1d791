"""The self-describing model file: which metadata a spkrec ONNX model carries.

This is the only module that names metadata keys. Training writes them through
``encode_metadata``; everything at run time reads them through ``decode_metadata`` into one
frozen ``ModelInfo``. Sample rate, window, hop, labels, prototypes and thresholds are stated
once, at export, and never repeated by hand downstream.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ModelError

FORMAT_VERSION = 1
FORMAT_KEY = "spkrec.format_version"
INPUT_NAME = "waveform"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"

_KEYS = {
    "sample_rate": "spkrec.sample_rate",
    "window_s": "spkrec.window_s",
    "hop_s": "spkrec.hop_s",
    "embedding_dim": "spkrec.embedding_dim",
    "labels": "spkrec.labels",
    "prototypes": "spkrec.prototypes",
    "thresholds": "spkrec.thresholds",
    "fingerprint": "spkrec.fingerprint",
    "training": "spkrec.training",
    "precision": "spkrec.precision",
    "int8_ranges": "spkrec.int8_ranges",
}


@dataclass(frozen=True, eq=False)
class ModelInfo:
    """Everything the runtime needs to know about a model, read from the file itself."""

    sample_rate: int
    window_s: float
    hop_s: float
    embedding_dim: int
    labels: tuple[str, ...]
    prototypes: np.ndarray  # [len(labels), embedding_dim], unit rows
    thresholds: Mapping[str, float]  # operating point name -> cosine threshold
    fingerprint: str  # identifies the embedding space; voiceprints are tied to it
    training: Mapping[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    # activation ranges measured on real speech at export, for the static int8 copy (models.quantize)
    int8_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sample_rate))


def _encode_array(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array, dtype="<f4")
    return json.dumps({"shape": list(data.shape), "f32le_b64": base64.b64encode(data.tobytes()).decode()})


def _decode_array(text: str) -> np.ndarray:
    obj = json.loads(text)
    raw = base64.b64decode(obj["f32le_b64"])
    return np.frombuffer(raw, dtype="<f4").reshape(obj["shape"]).astype(np.float32)


def encode_metadata(info: ModelInfo) -> dict[str, str]:
    """ModelInfo -> the string map stored in the ONNX file's metadata_props."""
    return {
        FORMAT_KEY: str(FORMAT_VERSION),
        _KEYS["sample_rate"]: str(int(info.sample_rate)),
        _KEYS["window_s"]: repr(float(info.window_s)),
        _KEYS["hop_s"]: repr(float(info.hop_s)),
        _KEYS["embedding_dim"]: str(int(info.embedding_dim)),
        _KEYS["labels"]: json.dumps(list(info.labels)),
        _KEYS["prototypes"]: _encode_array(info.prototypes),
        _KEYS["thresholds"]: json.dumps({k: float(v) for k, v in info.thresholds.items()}),
        _KEYS["fingerprint"]: info.fingerprint,
        _KEYS["training"]: json.dumps(dict(info.training)),
        _KEYS["precision"]: info.precision,
        **({_KEYS["int8_ranges"]: json.dumps({k: [float(lo), float(hi)] for k, (lo, hi) in info.int8_ranges.items()})}
           if info.int8_ranges else {}),
    }


def decode_metadata(meta: Mapping[str, str], source: str | Path = "model") -> ModelInfo:
    """The metadata string map -> a validated ModelInfo, or a ModelError that says why not."""
    if FORMAT_KEY not in meta:
        raise ModelError(
            f"{source} is not a spkrec model (no spkrec metadata); "
            "make one with `spkrec train` or `spkrec export`"
        )
    try:
        version = int(meta[FORMAT_KEY])
    except ValueError:
        raise ModelError(f"{source} has an unreadable format version {meta[FORMAT_KEY]!r}") from None
    if version != FORMAT_VERSION:
        newer = "newer" if version > FORMAT_VERSION else "older"
        raise ModelError(
            f"{source} uses model format version {version}, {newer} than this spkrec's "
            f"({FORMAT_VERSION}): re-export it with this version of spkrec"
            + (" or upgrade spkrec" if version > FORMAT_VERSION else "")
        )
    try:
        labels = tuple(json.loads(meta[_KEYS["labels"]]))
        prototypes = _decode_array(meta[_KEYS["prototypes"]])
        info = ModelInfo(
            sample_rate=int(meta[_KEYS["sample_rate"]]),
            window_s=float(meta[_KEYS["window_s"]]),
            hop_s=float(meta[_KEYS["hop_s"]]),
            embedding_dim=int(meta[_KEYS["embedding_dim"]]),
            labels=labels,
            prototypes=prototypes,
            thresholds=json.loads(meta[_KEYS["thresholds"]]),
            fingerprint=meta[_KEYS["fingerprint"]],
            training=json.loads(meta.get(_KEYS["training"], "{}")),
            precision=meta.get(_KEYS["precision"], "fp32"),
            int8_ranges={k: (float(lo), float(hi)) for k, (lo, hi) in
                         json.loads(meta.get(_KEYS["int8_ranges"], "{}")).items()},
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{source} has damaged spkrec metadata ({type(exc).__name__}: {exc})") from None
    _validate(info, source)
    return info


def info_of(model: Any, source: str | Path = "model") -> ModelInfo:
    """The ModelInfo of a loaded ``onnx.ModelProto`` (export-side tools and the int8 builder)."""
    return decode_metadata({p.key: p.value for p in model.metadata_props}, source)


def stamp(model: Any, info: ModelInfo, fingerprint: bool = True) -> ModelInfo:
    """Fingerprint the graph (weights included) and write the metadata into a loaded
    ``onnx.ModelProto``; returns the stamped info. A copy of another precision keeps its
    original's fingerprint (``fingerprint=False``): it computes the same embedding space, so
    voiceprints enrolled with either serve both. Only the graph is hashed, so restamping the
    metadata (thresholds, clustering scales) keeps every voiceprint valid."""
    del model.metadata_props[:]
    if fingerprint:
        info = dataclasses.replace(info, fingerprint=hashlib.sha256(model.graph.SerializeToString()).hexdigest()[:16])
    for key, value in encode_metadata(info).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "spkrec"
    return info


def save_atomically(model: Any, path: Path) -> None:
    """Write ``model`` beside ``path`` and rename it into place: a reader (a running daemon, a
    kill in the middle) sees the old file or the new one, never half of one."""
    import onnx  # export-side only: the daemon reads models through ONNX Runtime

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)


def _validate(info: ModelInfo, source: str | Path) -> None:
    if info.sample_rate <= 0 or info.window_s <= 0 or info.hop_s <= 0:
        raise ModelError(f"{source} metadata has a non-positive rate, window or hop")
    if info.prototypes.shape != (len(info.labels), info.embedding_dim):
        raise ModelError(
            f"{source} metadata is inconsistent: {len(info.labels)} labels but prototypes of "
            f"shape {info.prototypes.shape} for embedding size {info.embedding_dim}"
        )
