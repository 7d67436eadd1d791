"""`spkrec live` / `spkrec-live` and `spkrec label`: a mode's pipeline (daemon/modes.py, daemon/live.py)."""

from __future__ import annotations

import argparse

from spkrec.models.config import Config


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.live import run_live

    return run_live(args, cfg)


def run_label(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.live import run_live

    args.mode, args.inputs, args.fast, args.no_ui = "label", [args.input], True, True  # daemon/modes.py: "label"
    return run_live(args, cfg)
