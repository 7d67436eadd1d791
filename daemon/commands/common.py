"""What several commands share: the engine they open, and a warning line."""

from __future__ import annotations

from rich.console import Console

from spkrec.models.config import Config


def engine_for(cfg: Config):
    from spkrec.daemon.default_model import open_engine
    from spkrec.daemon.service.logs import console_warning

    return open_engine(cfg, console_warning(Console(stderr=True)))


def warning(text: str) -> None:
    """One yellow line on stderr, never wrapped, with no markup read from names or paths."""
    Console(stderr=True, soft_wrap=True).print(f"warning: {text}", style="yellow", markup=False, highlight=False)
