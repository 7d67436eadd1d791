"""`spkrec-live`: turn arguments and config into a running pipeline, and a summary at the end."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from spkrec.daemon.commands.demo import demo_gallery, demo_source
from spkrec.daemon.default_model import open_engine
from spkrec.daemon.door.config import DoorConfig, door_for, rule_key, rule_of
from spkrec.daemon.door.hook import DoorSink, audit_path
from spkrec.daemon.door.visit import VisitTracker
from spkrec.daemon.meeting.session import LiveMeeting, Meeting, Namer, OfflineMeeting, summary
from spkrec.daemon.modes import Mode, door_left_out, mode_of
from spkrec.daemon.pipeline.decisions import Decider, DeciderSettings, TurnDecider
from spkrec.daemon.pipeline.devices import resolve
from spkrec.daemon.pipeline.events import StatusEvent
from spkrec.daemon.pipeline.roster import LivePoint, Roster, open_gallery, skipped_voices
from spkrec.daemon.pipeline.run import Pipeline, Stream
from spkrec.daemon.pipeline.sinks import JsonlSink, LogSink, ProgressSink
from spkrec.daemon.pipeline.sources import FileSource, MicrophoneSource, StdinSource
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.pipeline.vad import Vad
from spkrec.daemon.pipeline.windowing import Windower
from spkrec.daemon.service import logs
from spkrec.daemon.service.metrics import MetricsServer
from spkrec.daemon.service.notify import Supervisor, SystemdNotifier
from spkrec.daemon.ui import TerminalUI
from spkrec.models.artifact import ModelInfo
from spkrec.models.clustering import Scales
from spkrec.models.config import Config, is_input_name
from spkrec.models.errors import DeviceError, SpkrecError
from spkrec.models.gallery import Gallery
from spkrec.models.thresholds import DOOR, UTTERANCE, OperatingPoint
from spkrec.models.utterance import embed_once


@dataclass(frozen=True)
class InputSpec:
    """One input to serve: a named microphone, file or stdin."""

    name: str
    device: str = ""  # an index or name substring; "" with no file = the configured or default microphone
    file: str = ""  # a path, or "-" for raw PCM on stdin


def _split_name(value: str) -> tuple[str, str]:
    """'front=2' -> ('front', '2'); a plain value has no name."""
    name, sep, rest = value.partition("=")
    if sep and not Path(value).exists() and is_input_name(name):
        return name, rest
    return "", value


def input_specs(args: argparse.Namespace, cfg: Config) -> list[InputSpec]:
    """The inputs from --device/--input (repeatable, NAME=... allowed), else [inputs.*], else one
    microphone ([audio] device or the system default). Names are unique: events carry them."""
    specs = []
    for value in getattr(args, "devices", None) or []:
        name, device = _split_name(value)
        specs.append(InputSpec(name or (f"mic{device}" if device.isdigit() else device), device=device))
    for value in getattr(args, "inputs", None) or []:
        name, file = _split_name(value)
        specs.append(InputSpec(name or ("stdin" if file == "-" else Path(file).stem), file=file))
    if not specs:
        specs = [InputSpec(n, device=e.device, file=e.file) for n, e in cfg.inputs.items()]
    if not specs:
        specs = [InputSpec("mic", device=cfg.audio.device)]
    seen: dict[str, int] = {}
    unique = []
    for spec in specs:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        unique.append(spec if seen[spec.name] == 1 else replace(spec, name=f"{spec.name}-{seen[spec.name]}"))
    return unique


def wants_demo(args: argparse.Namespace, cfg: Config, console: Console) -> bool:
    """The demo only when asked (--demo), or for a person at a terminal who configured no input
    and has no microphone. A service must never hear made-up voices: without a microphone it
    stops with an error (and systemd restarts it until the device is there)."""
    if getattr(args, "demo", False):
        if getattr(args, "devices", None) or getattr(args, "inputs", None):
            raise SpkrecError("--demo plays its own conversation: drop --device / --input")
        return True
    configured = getattr(args, "devices", None) or getattr(args, "inputs", None) or cfg.inputs or cfg.audio.device
    if configured or args.no_ui or not (console.is_terminal and sys.stdin.isatty()):
        return False
    try:
        resolve("")
        return False
    except DeviceError as exc:
        console.print(f"[yellow]{exc}: running the demo instead (enrollment, then a conversation); "
                      "spkrec-live --demo runs it on purpose[/]")
        return True


def build_source(spec: InputSpec, args: argparse.Namespace, cfg: Config, rate: int):
    """A file, stdin or a microphone; a missing microphone is an error that says what to do."""
    block_s = cfg.audio.block_s
    if spec.file == "-":
        return StdinSource(cfg.audio.stdin_rate, rate, block_s)
    if spec.file:
        return FileSource(Path(spec.file), rate, block_s, realtime=not getattr(args, "fast", False))
    try:
        device = resolve(spec.device)
    except DeviceError as exc:
        raise DeviceError(f"no microphone to listen to: {exc}; --demo plays the demo instead") from None
    # Device status events reach the sinks once the stream exists (see run_live).
    return MicrophoneSource(device, rate, block_s, cfg.audio.queue_s, cfg.audio.reconnect_max_s, lambda e: None)


def _shared_sinks(args: argparse.Namespace, mode: Mode, cfg: Config, states: list[LiveState], threshold: float,
                  duration_s: float, console: Console, logger: logging.Logger | None) -> list:
    sinks: list = []
    if args.events:
        sinks.append(JsonlSink(args.events))
    if mode.screen == "progress":
        sinks.append(ProgressSink(duration_s, console))
    elif logger is not None:
        sinks.append(LogSink(logger, tag_streams=len(states) > 1))
    else:
        sinks.append(TerminalUI(states, threshold, cfg.ui.refresh_hz, console))
    return sinks


def run_live(args: argparse.Namespace, cfg: Config) -> int:
    console = Console(stderr=True)
    # --no-ui (a service): every line through the log, with time and level; `spkrec label` keeps its progress bar
    asked = mode_of(args)  # the demo, if it comes to that, is known only once the microphone is looked for
    logger = logs.setup(cfg.log.level) if args.no_ui and asked.screen != "progress" else None
    warn = logger.warning if logger is not None else logs.console_warning(console)
    on_screen = warn if logger is None else None  # start warnings: said now for a person; a log gets the event
    engine = open_engine(cfg, warn)
    info = engine.info
    specs = input_specs(args, cfg)
    if asked.decider == "live-meeting" and len(specs) > 1:
        raise SpkrecError("meeting mode labels one input at a time: give one --device or --input")
    engine.warm_up_batches(len(specs))  # a new batch shape's first call is slow (README, GPU)
    window_s = cfg.stream.window_s or info.window_s
    hop_s = cfg.stream.hop_s or info.hop_s
    mode = mode_of(args, wants_demo(args, cfg, console))
    demo = mode.sources == "demo"
    if demo:  # the demo enrolls its voices into a gallery of its own; the user's is never touched
        specs = [InputSpec("demo")]
        sources = [demo_source(cfg, info.sample_rate)]
        gallery: Gallery | Path | None = demo_gallery(engine, cfg, console)
    else:
        sources = [build_source(spec, args, cfg, info.sample_rate) for spec in specs]
        gallery = open_gallery(cfg) or cfg.gallery_path()  # a path: picked up once enrollment creates it
    opened = gallery if isinstance(gallery, Gallery) else None
    skipped = skipped_voices(opened, info.fingerprint)
    if skipped:
        warn(skipped)
    roster = Roster(info, gallery, cfg.decision.trained_speakers)
    streams, points = [], []
    for spec, source in zip(specs, sources):
        live_point = LivePoint(cfg.decision, roster)  # follows a new calibration of the gallery
        points.append(live_point)
        state = LiveState(source=source.name, rate=info.sample_rate, provider=engine.provider, hop_s=hop_s,
                          timeline_s=cfg.ui.timeline_s, demo=demo, name=spec.name)
        decider = _decider(cfg, mode, engine, roster, live_point, hop_s)
        streams.append(Stream(source, Vad(info.sample_rate, cfg.vad.frame_ms, cfg.vad.aggressiveness),
                              Windower(info.sample_rate, window_s, hop_s), decider, state, name=spec.name, demo=demo))
    roster.report = streams[0].emit  # from the pipeline thread, which reads the roster
    namer = Namer(roster, points[0].point.threshold, cfg.stream.smoothing)
    meeting = _meeting(args, mode, cfg, info, namer, window_s, hop_s, streams[0].source.name, engine.source)
    duration = sum(getattr(s.source, "duration_s", 0.0) for s in streams)
    shared = _shared_sinks(args, mode, cfg, [s.state for s in streams], points[0].point.threshold, duration, console,
                           logger)
    for stream, live_point in zip(streams, points):
        live_point.report = stream.emit
        if isinstance(stream.decider, TurnDecider):
            stream.decider.turn_point.report = stream.emit
        if meeting is not None:
            stream.decider = meeting.decider(stream.decider, stream.emit)
            stream.sinks[:0] = meeting.sinks()  # turns close before the UI and event log see "stopped"
        door = door_for(cfg, stream.name)
        if door.authorized and not mode.door:
            _notice(stream, door_left_out(mode), on_screen, len(streams) > 1)
        elif door.authorized:
            door_point = LivePoint(cfg.decision, roster, DOOR + rule_key(rule_of(door, cfg.decision.margin)),
                                   "door threshold", stream.emit)
            stream.stages.append(VisitTracker(roster, info.sample_rate, hop_s, door.visit_s, door.every_s,
                                              door.max_visit_s))
            # the door's worker reports through stream.emit, which reaches the pipeline thread
            stream.sinks.append(DoorSink(door, stream.emit, door_point, cfg.decision.margin))
            for warning in door_warnings(door, roster, opened, info.fingerprint, door_point.point):
                _notice(stream, warning, on_screen, len(streams) > 1)
            record = audit_path(door)
            said = f"door decisions recorded in {record}" if record else "door decisions on the event stream only"
            if on_screen is not None:
                on_screen(f"{stream.name}: {said}" if len(streams) > 1 else said)
            stream.notices.append(StatusEvent("door", said, {"audit_log": str(record) if record else None}))
        if hasattr(stream.source, "on_status"):
            stream.source.on_status = stream.emit  # device status: posted to the pipeline thread
    metrics = _metrics(mode, cfg, streams, engine, shared, say=logger.info if logger is not None else console.print)
    supervisor = Supervisor(SystemdNotifier(), [*shared, *(sink for s in streams for sink in s.sinks)],
                            lambda: "listening on " + ", ".join(s.source.name for s in streams))
    pipeline = Pipeline(streams, engine, shared, cfg.stream.batch_wait_s, supervisor=supervisor)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    restore_hup = supervisor.install_sighup()
    try:
        pipeline.run(stop)
    finally:
        restore_hup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics is not None:
            metrics.close()
    if mode.summary == "meeting":
        print_meeting_summary(meeting, streams[0].state, console, logger)
    else:
        for stream in streams:
            print_summary(stream.state, console, stream.name if len(streams) > 1 else "", logger)
    return 0


def _decider(cfg: Config, mode: Mode, engine, roster: Roster, point: LivePoint, hop_s: float) -> Decider:
    """``[stream] labels``: each window's label, or the turn's from its accumulated audio (meetings
    cluster windows of their own: they keep the window decider)."""
    settings = DeciderSettings(point.point.threshold, cfg.decision.margin, cfg.stream.smoothing,
                               cfg.vad.min_voiced_ratio)
    if cfg.stream.labels == "window" or mode.decider != "windows":
        return Decider(roster, settings, point)
    turn_point = LivePoint(cfg.decision, roster, UTTERANCE, "turn threshold")
    return TurnDecider(roster, settings, point, lambda audio: embed_once(engine, audio), turn_point,
                       engine.info.sample_rate, hop_s)


def _metrics(mode: Mode, cfg: Config, streams: list[Stream], engine, shared: list,
             say: Callable[[str], None]) -> MetricsServer | None:
    """The Prometheus endpoint of a live daemon ([metrics] listen); `spkrec label` is a job, not a service."""
    if not cfg.metrics.listen or not mode.metrics:
        return None
    server = MetricsServer(cfg.metrics, [s.state for s in streams], engine.provider, engine.precision,
                           engine.info.fingerprint, str(engine.source), engine.precision_note)
    shared.append(server.sink)
    say(f"metrics on http://{server.address}/metrics, health on http://{server.address}/health")
    return server


def _notice(stream: Stream, warning: str, say: Callable[[str], None] | None, tag: bool = False) -> None:
    """A warning found at start: a ``warning`` status event after "listening" (in the event log, and
    in the service log through it), and on screen now for a person (``say``)."""
    if say is not None:
        say(f"{stream.name}: {warning}" if tag else warning)
    stream.notices.append(StatusEvent("warning", warning))


def door_warnings(door: DoorConfig, roster: Roster, gallery: Gallery | None, fingerprint: str,
                  point: OperatingPoint) -> list[str]:
    """What makes a door less than it seems, said at start: names it can never grant, voiceprints
    it cannot score, a threshold nobody measured on this site's voices."""
    warnings = []
    foreign = set(gallery.foreign(fingerprint)) if gallery is not None else set()
    stale = [name for name in door.authorized if name in foreign]
    if stale:
        warnings.append(f"authorised {', '.join(stale)} enrolled with another model: the door cannot grant "
                        "them until they are re-enrolled with this one")
    unknown = [name for name in door.authorized if name not in roster.names() and name not in foreign]
    if unknown:
        warnings.append(f"authorised {', '.join(unknown)} neither trained nor enrolled: the door cannot grant them")
    if point.calibrated and not point.fits:
        warnings.append(f"door threshold {point.threshold:.3f} is the gallery's {point.source}: the calibration "
                        "predates this door or its rule changed (authorised names, visit keys, margin): run "
                        "spkrec calibrate --impostors ... again (README, The door hook)")
    elif not point.fits:
        warnings.append(f"door threshold {point.threshold:.3f} comes from the model's training ({point.source}), not "
                        "measured on this gallery: run spkrec calibrate --impostors ... (README, The door hook)")
    return warnings


def _meeting(args: argparse.Namespace, mode: Mode, cfg: Config, info: ModelInfo, namer: Namer, window_s: float,
             hop_s: float, source_name: str, model: Path) -> Meeting | None:
    """``spkrec label`` clusters the whole recording when it ends; ``--meeting`` live, as it goes."""
    if mode.decider not in ("live-meeting", "offline-meeting"):
        return None
    rttm = Path(args.rttm) if getattr(args, "rttm", None) else None
    guests = Path(args.guests) if getattr(args, "guests", None) else (
        rttm.with_suffix(".guests.json") if rttm is not None else None)
    files = [f for f in (getattr(args, "inputs", None) or []) if f != "-"]
    file_id = Path(_split_name(files[0])[1]).stem if files else Path(source_name).stem or "live"
    scales = Scales.of(info.thresholds, str(model))
    common = (cfg.meeting, scales, namer, window_s, hop_s, info.fingerprint, rttm, guests, file_id)
    if mode.decider == "offline-meeting":
        return OfflineMeeting(*common)
    return LiveMeeting(*common)


def print_meeting_summary(meeting: Meeting, state: LiveState, console: Console,
                          logger: logging.Logger | None = None) -> None:
    rows = [(label, f"{seconds:.1f} s", str(turns), f"{share:.0%}") for label, seconds, turns, share
            in summary(meeting.final_turns())]
    written = [f"wrote {path}" for path in (meeting.rttm, meeting.guests_file) if path is not None and path.is_file()]
    _say_table(f"meeting summary: {state.stream_time:.1f} s of audio", ("speaker", "talk time", "turns", "share"),
               rows, written, console, logger)


def print_summary(state: LiveState, console: Console, stream: str = "", logger: logging.Logger | None = None) -> None:
    total = sum(state.talk_time.values())
    rows = [(label, f"{seconds:.1f} s", f"{seconds / total:.0%}" if total else "-", str(state.turns[label]))
            for label, seconds in state.talk_time.most_common()]
    timing = (f"inference p50 {state.percentile(state.inference_ms, 50):.1f} ms, p95 "
              f"{state.percentile(state.inference_ms, 95):.1f} ms; latency p50 "
              f"{state.percentile(state.latency_ms, 50):.1f} ms; dropped blocks {state.dropped}, "
              f"overflows {state.overflows}")
    _say_table(f"{stream + ': ' if stream else ''}session summary: {state.stream_time:.1f} s of audio, "
               f"{state.windows} scored windows", ("speaker", "talk time", "share", "turns"), rows, [timing],
               console, logger)


def _say_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], notes: list[str], console: Console,
               logger: logging.Logger | None) -> None:
    """A table for a person; for the service log one line per row, each a log line of its own."""
    if logger is not None:
        logger.info(title)
        for row in rows:
            logger.info("  " + ", ".join(f"{column} {value}" for column, value in zip(columns, row)))
        for note in notes:
            logger.info(note)
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "speaker" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in notes:
        console.print(note)
