"""Export: the trained network as one self-describing ONNX file, checked against PyTorch.

The graph takes raw waveforms (log-mel front end inside) and returns unit embeddings and
logits; the metadata (models.artifact) carries rates, window, labels, prototypes, thresholds
and a fingerprint. Parity with PyTorch is measured on real audio and an export beyond
tolerance fails rather than ship a model that serves something other than what was measured.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from spkrec.models.artifact import EMBEDDING_OUTPUT, INPUT_NAME, LOGITS_OUTPUT, ModelInfo, save_atomically, stamp
from spkrec.models.engine import Engine
from spkrec.models.errors import ModelError

from .network import HalfPrecision, SpeakerNet

PARITY_TOLERANCE = 1e-3
OPSET = 17


def export_onnx(net: SpeakerNet | HalfPrecision, info: ModelInfo, path: Path, copy_of: bool = False) -> ModelInfo:
    """Trace the eval-mode network on CPU to ONNX and stamp its metadata; returns the stamped info.
    ``copy_of``: a precision copy of an exported model, which keeps ``info.fingerprint``."""
    net = net.to("cpu").eval()
    dummy = torch.zeros(2, info.window_samples)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            net, (dummy,), str(raw), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[EMBEDDING_OUTPUT, LOGITS_OUTPUT],
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"}, EMBEDDING_OUTPUT: {0: "batch"}, LOGITS_OUTPUT: {0: "batch"}},
        )
        model = onnx.load(str(raw))
    info = stamp(model, info, fingerprint=not copy_of)
    save_atomically(model, path)
    return info


def parity(net: SpeakerNet, path: Path, batch: np.ndarray) -> float:
    """Max |embedding difference| between PyTorch and ONNX Runtime (CPU) on the same batch."""
    net = net.to("cpu").eval()
    with torch.no_grad():
        reference = net(torch.from_numpy(batch))[0].numpy()
    served = Engine(path, provider="cpu").embed(batch)
    return float(np.max(np.abs(reference - served)))


def check_parity(net: SpeakerNet, path: Path, batch: np.ndarray) -> float:
    diff = parity(net, path, batch)
    if not diff <= PARITY_TOLERANCE:
        raise ModelError(f"export parity failed: PyTorch and ONNX Runtime differ by {diff:.2e} (> {PARITY_TOLERANCE:g})")
    return diff


def speed_ms(path: Path, window_samples: int, repeats: int = 20, provider: str = "cpu") -> float:
    """Median ms per window at batch 1 on the given provider."""
    engine = Engine(path, provider=provider)
    batch = np.zeros((1, window_samples), np.float32)
    engine.embed(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.embed(batch)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))
