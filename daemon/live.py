"""`spkrec-live`: turn arguments and config into a running pipeline, and a summary at the end."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spkrec.models.config import Config
from spkrec.models.democorpus import build_corpus
from spkrec.models.errors import DeviceError
from spkrec.models.gallery import Gallery

from .decisions import Decider, DeciderSettings
from .default_model import open_engine
from .devices import resolve
from .door import DoorSink
from .meeting import Meeting, summary
from .pipeline import Pipeline
from .roster import Roster, decision_threshold
from .sinks import JsonlSink, LogSink, ProgressSink
from .sources import DemoSource, FileSource, MicrophoneSource, StdinSource
from .state import LiveState
from .ui import TerminalUI
from .vad import Vad
from .windowing import Windower


def open_gallery(cfg: Config) -> Gallery | None:
    """The enrolled voices, if a gallery exists; the daemon never creates one."""
    path = cfg.gallery_path()
    return Gallery(path) if path.is_file() else None


def build_source(args: argparse.Namespace, cfg: Config, rate: int, console: Console):
    """(source, is_demo): file, stdin, microphone, or the demo stream when there is no microphone."""
    block_s = cfg.audio.block_s
    if args.input == "-":
        return StdinSource(cfg.audio.stdin_rate, rate, block_s), False
    if args.input:
        return FileSource(Path(args.input), rate, block_s, realtime=not args.fast), False
    explicit = bool(cfg.audio.device)
    try:
        device = resolve(cfg.audio.device)
    except DeviceError as exc:
        if explicit:
            raise
        console.print(f"[yellow]{exc}: running on the demo stream instead[/]")
        return DemoSource(build_corpus(cfg.cache_dir())["heldout"], rate, block_s), True
    # Device status events reach the sinks once the pipeline exists (see run_live).
    return MicrophoneSource(device, rate, block_s, cfg.audio.queue_s, cfg.audio.reconnect_max_s, lambda e: None), False


def run_live(args: argparse.Namespace, cfg: Config) -> int:
    console = Console(stderr=True)
    engine = open_engine(cfg, console, args.config)
    engine.warm_up()
    info = engine.info
    window_s = cfg.stream.window_s or info.window_s
    hop_s = cfg.stream.hop_s or info.hop_s
    gallery = open_gallery(cfg)
    roster = Roster(info, gallery, cfg.decision.trained_speakers)
    threshold = decision_threshold(cfg, info, gallery)
    sinks: list = []
    source, demo = build_source(args, cfg, info.sample_rate, console)
    state = LiveState(source=source.name, rate=info.sample_rate, provider=engine.provider, hop_s=hop_s,
                      timeline_s=cfg.ui.timeline_s, demo=demo)
    meeting = _meeting(args, cfg, guest_threshold(cfg, info, gallery), hop_s, info.fingerprint, source.name)
    if args.events:
        sinks.append(JsonlSink(args.events))
    if getattr(args, "progress", False):
        sinks.append(ProgressSink(getattr(source, "duration_s", 0.0), console))
    elif args.no_ui:
        sinks.append(LogSink())
    else:
        sinks.append(TerminalUI(state, threshold, cfg.ui.refresh_hz, console))
    decider = Decider(roster, DeciderSettings(threshold, cfg.decision.margin, cfg.stream.smoothing,
                                              cfg.vad.min_voiced_ratio))
    pipeline = Pipeline(
        source=source,
        vad=Vad(info.sample_rate, cfg.vad.frame_ms, cfg.vad.aggressiveness),
        windower=Windower(info.sample_rate, window_s, hop_s),
        engine=engine,
        decider=meeting.decider(decider) if meeting else decider,
        state=state,
        sinks=sinks,
    )
    if meeting is not None:
        sinks[:0] = meeting.sinks(pipeline.emit)  # turns close before the UI and event log see "stopped"
    if cfg.door.authorized:
        sinks.append(DoorSink(cfg.door, hop_s, pipeline.emit))  # the pipeline holds this same list
    if hasattr(source, "on_status"):
        source.on_status = pipeline.emit  # device status goes to every sink from now on

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        pipeline.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if meeting is not None:
        print_meeting_summary(meeting, state, console)
    else:
        print_summary(state, console)
    return 0


def guest_threshold(cfg: Config, info, gallery: Gallery | None) -> float:
    """Where a window joins a guest: ``[meeting] guest_threshold``, else the equal-error point
    (the gallery's calibration, else the model's): clustering should balance splitting one
    voice against merging two, where a door's threshold guards against false accepts only."""
    if cfg.meeting.guest_threshold:
        return cfg.meeting.guest_threshold
    calibrated = gallery.calibration(info.fingerprint) if gallery is not None else None
    if calibrated and "eer_threshold" in calibrated:
        return float(calibrated["eer_threshold"])
    return float(info.thresholds.get("eer", cfg.threshold_for(info.thresholds)))


def _meeting(args: argparse.Namespace, cfg: Config, threshold: float, hop_s: float, fingerprint: str,
             source_name: str) -> Meeting | None:
    if not getattr(args, "meeting", False):
        return None
    rttm = Path(args.rttm) if getattr(args, "rttm", None) else None
    guests = Path(args.guests) if getattr(args, "guests", None) else (
        rttm.with_suffix(".guests.json") if rttm is not None else None)
    file_id = Path(args.input).stem if args.input and args.input != "-" else Path(source_name).stem or "live"
    return Meeting(cfg.meeting, threshold, hop_s, fingerprint, rttm, guests, file_id)


def print_meeting_summary(meeting: Meeting, state: LiveState, console: Console) -> None:
    table = Table(title=f"meeting summary: {state.stream_time:.1f} s of audio")
    for column in ("speaker", "talk time", "turns", "share"):
        table.add_column(column, justify="left" if column == "speaker" else "right")
    for label, seconds, turns, share in summary(meeting.final_turns()):
        table.add_row(label, f"{seconds:.1f} s", str(turns), f"{share:.0%}")
    console.print(table)
    for path in (meeting.rttm, meeting.guests_file):
        if path is not None and path.is_file():
            console.print(f"wrote {path}")


def print_summary(state: LiveState, console: Console) -> None:
    total = sum(state.talk_time.values())
    table = Table(title=f"session summary: {state.stream_time:.1f} s of audio, {state.windows} scored windows")
    for column in ("speaker", "talk time", "share", "turns"):
        table.add_column(column, justify="left" if column == "speaker" else "right")
    for label, seconds in state.talk_time.most_common():
        table.add_row(label, f"{seconds:.1f} s", f"{seconds / total:.0%}" if total else "-", str(state.turns[label]))
    console.print(table)
    console.print(f"inference p50 {state.percentile(state.inference_ms, 50):.1f} ms, p95 "
                  f"{state.percentile(state.inference_ms, 95):.1f} ms; latency p50 "
                  f"{state.percentile(state.latency_ms, 50):.1f} ms; dropped blocks {state.dropped}, "
                  f"overflows {state.overflows}")
