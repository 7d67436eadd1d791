"""An ONNX Runtime session that turns waveforms into speaker embeddings.

It knows nothing of microphones or speakers: waveforms in, unit embeddings out, with the
provider actually used reported so that a silent fall-back from CUDA to CPU is visible.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .artifact import EMBEDDING_OUTPUT, INPUT_NAME, ModelInfo, decode_metadata
from .errors import EngineError, ModelError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _provider_list(provider: str) -> list:
    available = available_providers()
    if provider == "auto":
        provider = "cuda" if PROVIDERS["cuda"] in available else "cpu"
    if provider not in PROVIDERS:
        raise EngineError(f"unknown provider '{provider}' (choose auto, cpu or cuda)")
    if PROVIDERS[provider] not in available:
        raise EngineError(
            f"provider '{provider}' is not available in this onnxruntime (has: {', '.join(available)}); "
            "for CUDA install onnxruntime-gpu instead of onnxruntime (see README, GPU)"
        )
    if provider == "cuda":
        # Heuristic conv algorithm choice: an exhaustive search would re-tune for every new
        # batch size or window length the daemon happens to send.
        options = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
        return [(PROVIDERS["cuda"], options), PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


def _default_threads() -> int:
    """One intra-op thread per CPU the process may use: more only adds contention."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Engine:
    """One inference session over one spkrec model file."""

    def __init__(self, path: str | Path, provider: str = "auto", threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads if threads > 0 else _default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_provider_list(provider))
        except EngineError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path} is not a loadable ONNX model: {first}") from None
        self.info: ModelInfo = decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.requested = provider
        self.provider = self.session.get_providers()[0]
        self.last_ms = 0.0

    @property
    def fell_back(self) -> bool:
        """True when CUDA was asked for explicitly but the session runs on the CPU."""
        return self.requested == "cuda" and self.provider != PROVIDERS["cuda"]

    def embed(self, waveforms: np.ndarray) -> np.ndarray:
        """[batch, samples] float32 at the model rate -> [batch, D] unit embeddings."""
        batch = np.ascontiguousarray(waveforms, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch[None, :]
        start = time.perf_counter()
        (emb,) = self.session.run([EMBEDDING_OUTPUT], {INPUT_NAME: batch})
        self.last_ms = (time.perf_counter() - start) * 1000.0
        return emb

    def embed_windows(self, windows: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Embed many windows in batches so memory stays bounded on long files."""
        parts = [self.embed(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.info.embedding_dim), np.float32)

    def warm_up(self, batch: int = 1) -> float:
        """Run once on silence so the first real window is not slowed by lazy initialisation."""
        self.embed(np.zeros((batch, self.info.window_samples), dtype=np.float32))
        return self.last_ms
