"""`spkrec devices`: the audio input devices PortAudio sees."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from spkrec.models.config import Config


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.pipeline.devices import default_input, list_inputs

    inputs = list_inputs()
    if not inputs:
        print("spkrec: no audio input devices found", file=sys.stderr)
        return 1
    default = default_input()
    table = Table(title="audio input devices")
    for column in ("index", "name", "host API", "channels", "default rate", "default"):
        table.add_column(column)
    for d in inputs:
        table.add_row(str(d.index), d.name, d.hostapi, str(d.channels), f"{d.default_rate} Hz",
                      "*" if default and d.index == default.index else "")
    Console().print(table)
    return 0
