"""Which model a command uses: the configured one, or the embedded default model.

The default model is built once by the training room (`spkrec default-model`, run as a
separate process so the daemon never imports torch) and cached.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from spkrec.models.config import Config
from spkrec.models.engine import Engine
from spkrec.models.errors import ModelError


def ensure_model(cfg: Config, console: Console, config_path: Path | None = None) -> Path:
    """The configured model; else the default model, built once (it needs the train extra)."""
    if cfg.model.path:
        path = Path(cfg.model.path).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {path} (check --model or [model] path)")
        return path
    default = cfg.default_model_path()
    if default.is_file():
        return default
    console.print("no model configured: building the default model once (a few minutes on a CPU) ...")
    command = [str(Path(sys.executable).with_name("spkrec")), "default-model"]
    if config_path is not None:
        command += ["--config", str(config_path)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL)
    if done.returncode != 0 or not default.is_file():
        raise ModelError("could not build the default model (see above); pass --model PATH to use your own")
    return default


def open_engine(cfg: Config, console: Console, config_path: Path | None = None) -> Engine:
    """The inference session every command uses, with a visible warning when CUDA was wanted
    but the session runs on the CPU (onnxruntime-gpu installed, CUDA libraries not loadable)."""
    engine = Engine(ensure_model(cfg, console, config_path), cfg.model.provider, cfg.model.threads,
                    io_binding=cfg.model.io_binding)
    if engine.fell_back:
        console.print(f"[bold yellow]warning: CUDA was wanted but ONNX Runtime runs the model on "
                      f"{engine.provider} (are the CUDA 13 / cuDNN 9 libraries installed? README, GPU)[/]")
    return engine
