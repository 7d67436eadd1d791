"""`spkrec systemd-unit`: the packaged unit, pointed at this install."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from spkrec.models.config import Config


def run(args: argparse.Namespace, cfg: Config) -> int:
    from importlib import resources

    unit = resources.files("spkrec.daemon.service").joinpath("systemd", "user" if args.user else "system", "spkrec.service")
    text = unit.read_text(encoding="utf-8")
    here = Path(sys.argv[0]).absolute().with_name("spkrec-live")  # next to this `spkrec` (a venv, pipx's bin)
    live = here if here.is_file() else Path(shutil.which("spkrec-live") or "")
    if live.name:
        text = re.sub(r"^ExecStart=\S+", f"ExecStart={live}", text, count=1, flags=re.M)
    print(text, end="")
    return 0
