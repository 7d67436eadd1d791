"""Which model a command uses: the configured one, or the base model the package ships."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from spkrec.models.base import base_model_path
from spkrec.models.config import Config
from spkrec.models.engine import PROVIDERS, Engine, available_providers
from spkrec.models.errors import EngineError, ModelError
from spkrec.models.precision import NO_RANGES, choose


def ensure_model(cfg: Config) -> Path:
    """The configured model (``--model`` / ``[model] path``); else the shipped base model."""
    if cfg.model.path:
        path = Path(cfg.model.path).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {path} (check --model or [model] path)")
        return path
    return base_model_path()


def open_engine(cfg: Config, warn: Callable[[str], None]) -> Engine:
    """The inference session every command uses, at the precision ``[model] precision`` picks
    for where it runs (models.precision). CUDA asked for by name but not obtained
    (onnxruntime-gpu installed, CUDA libraries not loadable) is an error: a user who said
    ``--provider cuda`` must not get a CPU quietly. ``auto`` warns and goes on on the CPU, with
    the copy meant for the CPU."""
    source = ensure_model(cfg)
    engine = _session(cfg, source, "cuda" if _wants_cuda(cfg.model.provider) else "cpu")
    if engine.fell_back:
        reason = (f"CUDA was wanted but ONNX Runtime runs the model on {engine.provider} (are the CUDA 13 / "
                  "cuDNN 9 libraries installed? README, GPU)")
        if cfg.model.provider == "cuda":
            raise EngineError(f"{reason}; use --provider auto or cpu to run on the CPU")
        warn(reason)
        if engine.device_name == "cpu" and cfg.model.precision == "auto" and engine.precision != "int8":
            engine = _session(cfg, source, "cpu")
    if engine.precision_note and engine.precision_note != NO_RANGES:
        warn(f"running {engine.precision}: {engine.precision_note}")
    return engine


def _wants_cuda(provider: str) -> bool:
    return provider == "cuda" or (provider == "auto" and PROVIDERS["cuda"] in available_providers())


def _session(cfg: Config, source: Path, where: str) -> Engine:
    choice = choose(source, cfg.model.precision, where, cfg.cache_dir())
    return Engine(choice.path, cfg.model.provider, cfg.model.threads, io_binding=cfg.model.io_binding,
                  precision=choice.precision, source=source, precision_note=choice.note)
