"""What each mode of ``spkrec-live`` / ``spkrec label`` is made of, as data.

One row per mode says where its audio comes from, what decides on each window, which sinks see
the events and whether a configured door or metrics endpoint belongs to it; ``live.run_live``
builds the pipeline from the row and nothing else decides it. The door belongs to live streams
alone: it grants on single-speaker visits scored by the door rule, so a replayed recording
(``label``, as fast as it decodes), a meeting's clusters and centroid scores (``--meeting``), or
made-up voices (``--demo``) must never reach a lock or an audit trail. A door configured
together with one of those modes is left out, with one notice that says so. A new mode is one
row here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    sources: str  # "inputs": microphones, files, stdin; "recording": one file, decoded as fast as it goes; "demo"
    decider: str  # "windows": each window by the decision rule; "live-meeting" / "offline-meeting": clustering
    screen: str  # "ui": the terminal UI (or log lines with --no-ui); "progress": a progress bar
    door: bool  # a configured [door] / [inputs.NAME.door] actuates here
    metrics: bool  # [metrics] listen serves here
    summary: str  # "speakers": talk time per speaker; "meeting": turns, guests, RTTM


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("live", "inputs", "windows", "ui", door=True, metrics=True, summary="speakers"),
    Mode("meeting", "inputs", "live-meeting", "ui", door=False, metrics=True, summary="meeting"),
    Mode("label", "recording", "offline-meeting", "progress", door=False, metrics=False, summary="meeting"),
    Mode("demo", "demo", "windows", "ui", door=False, metrics=False, summary="speakers"),
)}


def mode_of(args: argparse.Namespace, demo: bool = False) -> Mode:
    """The row for these arguments (``demo``: the demo was asked for, or chosen for want of a microphone)."""
    if demo:
        return MODES["demo"]
    if getattr(args, "mode", "") in MODES:  # a command that is a mode of its own (`spkrec label`)
        return MODES[args.mode]
    if getattr(args, "meeting", False):
        return MODES["meeting"]
    return MODES["live"]


def door_left_out(mode: Mode) -> str:
    """The notice for a door configured in a mode that never runs one."""
    return (f"the configured door is not run in {mode.name} mode (it opens only for live streams decided window "
            "by window): no hook, no webhook, no audit log here")
