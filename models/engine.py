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


# Heuristic conv algorithm choice: an exhaustive search re-tunes for every new batch size the
# daemon happens to send (one stream, then two, then four voiced at once), stalling that hop.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_use_max_workspace": "1"}


def resolve_provider(provider: str) -> str:
    """'auto' -> 'cuda' where this onnxruntime has the CUDA provider, else 'cpu'."""
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
    return provider


def _provider_list(provider: str, cuda_options: dict | None) -> list:
    if provider == "cuda":
        _preload_cuda_libraries()
        return [(PROVIDERS["cuda"], {**CUDA_OPTIONS, **(cuda_options or {})}), PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* pip packages (PyTorch's) when onnxruntime-gpu can,
    so a machine needs no system-wide CUDA install; without them the CUDA provider fails to load
    and the session falls back to the CPU, which ``Engine.fell_back`` reports."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # missing packages: the provider's own loader reports what is absent
            pass


def _default_threads() -> int:
    """One intra-op thread per CPU the process may use: more only adds contention."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Engine:
    """One inference session over one spkrec model file."""

    def __init__(self, path: str | Path, provider: str = "auto", threads: int = 0, io_binding: bool = False,
                 cuda_options: dict | None = None, precision: str = "", source: str | Path | None = None,
                 precision_note: str = "") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.source = Path(source) if source is not None else self.path  # the model asked for; ``path`` may be its copy
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads if threads > 0 else _default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # No CPU memory arena: an arena keeps the peak of every batch shape it has met (a load spike
        # that queues 16 windows), so a daemon's RSS steps up and never comes back; without it the
        # memory of a batch is freed after it, at no measured cost in speed (README, "CPU: static int8").
        options.enable_cpu_mem_arena = False
        self.requested = resolve_provider(provider)
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=_provider_list(self.requested, cuda_options))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path} is not a loadable ONNX model: {first}") from None
        self.info: ModelInfo = decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.provider = self.session.get_providers()[0]
        # what runs: "int8" / "fp16" copies say so; fp32 models stored as fp16 still compute in fp32
        self.precision = precision or ("fp32" if self.info.precision.startswith("fp16-") else self.info.precision)
        self.precision_note = precision_note  # why this is not the copy ``auto`` prefers (models.precision)
        self.last_ms = 0.0
        self._binding = self.session.io_binding() if io_binding and self.provider == PROVIDERS["cuda"] else None

    @property
    def fell_back(self) -> bool:
        """True when CUDA was wanted (asked for, or 'auto' with onnxruntime-gpu installed) but the
        session runs on the CPU: the CUDA libraries failed to load."""
        return self.requested == "cuda" and self.provider != PROVIDERS["cuda"]

    @property
    def device_name(self) -> str:
        """'cuda' or 'cpu': where the windows are really computed."""
        return "cuda" if self.provider == PROVIDERS["cuda"] else "cpu"

    def embed(self, waveforms: np.ndarray) -> np.ndarray:
        """[batch, samples] float32 at the model rate -> [batch, D] unit embeddings."""
        batch = np.ascontiguousarray(waveforms, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch[None, :]
        rows = batch.shape[0]
        if self.device_name == "cuda" and rows & (rows - 1):
            # Each new batch shape costs cuDNN ~180 ms on its first call (README, GPU); padding to a
            # power of two keeps the shapes a multi-input daemon or `label` meets to a handful.
            batch = np.concatenate([batch, np.repeat(batch[-1:], (1 << rows.bit_length()) - rows, axis=0)])
        start = time.perf_counter()
        if self._binding is not None:
            emb = self._run_bound(batch)
        else:
            (emb,) = self.session.run([EMBEDDING_OUTPUT], {INPUT_NAME: batch})
        self.last_ms = (time.perf_counter() - start) * 1000.0
        return emb[:rows]

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        """IO binding: the input is copied to the GPU once and only the embedding comes back
        (the logits output stays on the device)."""
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(INPUT_NAME, batch)
        binding.bind_output(EMBEDDING_OUTPUT, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def embed_windows(self, windows: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Embed many windows in batches so memory stays bounded on long files."""
        parts = [self.embed(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.info.embedding_dim), np.float32)

    def warm_up(self, batch: int = 1) -> float:
        """Run once on silence so the first real window is not slowed by lazy initialisation."""
        self.embed(np.zeros((batch, self.info.window_samples), dtype=np.float32))
        return self.last_ms

    def warm_up_batches(self, largest: int) -> None:
        """Warm every batch shape up to ``largest`` windows (on CUDA: the powers of two that
        ``embed`` pads to), so no hop of a running daemon pays a first-call cost."""
        sizes = range(1, largest + 1)
        if self.device_name == "cuda":
            sizes = sorted({1 << (n - 1).bit_length() for n in sizes})
        for size in sizes:
            self.warm_up(size)
