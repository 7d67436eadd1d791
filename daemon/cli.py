"""The ``spkrec`` command line: argument parsing, config, and one-line errors at the edge.

Subcommands of other rooms (training) are found through the ``spkrec.commands`` entry-point
group, so this module never imports training code and ``spkrec --help`` needs no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from spkrec.models import __version__
from spkrec.models.config import FLAG, Config, choices, load_config
from spkrec.models.errors import SpkrecError

Handler = Callable[[argparse.Namespace, Config], int]
TRAIN_MODULES = {"torch", "torchaudio", "torchvision", "matplotlib"}


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH",
                        help="config file (default: $SPKREC_CONFIG, $XDG_CONFIG_HOME/spkrec/config.toml, "
                             "/etc/spkrec/config.toml; `spkrec config` shows which)")
    return common


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="model.path", metavar="PATH", help="spkrec ONNX model [model.path]")
    p.add_argument("--provider", dest="model.provider", choices=choices("model.provider"),
                   help="ONNX Runtime execution provider [model.provider]")
    p.add_argument("--precision", dest="model.precision", choices=choices("model.precision"),
                   help="which copy of the model runs: auto = static int8 on the CPU, fp16 on CUDA [model.precision]")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> dict[str, Handler]:
    """The runtime subcommands of this room."""
    p = sub.add_parser("identify", parents=[common], help="name the speaker of each audio file",
                       description="Identify the speaker of each FILE (all windows averaged): best label, score and "
                                   "runner-up. The model comes from --model, [model] path, or the default model; a "
                                   "first argument ending in .onnx is taken as the model.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _model_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")

    p = sub.add_parser("live", parents=[common], help="listen and show who is speaking, live (also: spkrec-live)",
                       description="Capture audio (microphone, file or stdin), keep voiced audio, score sliding "
                                   "windows with ONNX Runtime and show live speaker labels. With no model configured "
                                   "the shipped base model is used. With no microphone on an interactive terminal "
                                   "and no input configured, or with --demo, a demo conversation plays instead.")
    p.add_argument("--version", action="version", version=f"spkrec {__version__}")
    p.add_argument("--device", dest="devices", action="append", metavar="[NAME=]ID",
                   help="input device index or name substring (`spkrec devices`); repeat to serve several "
                        "microphones at once, NAME= names the stream [audio.device, inputs.NAME.device]")
    p.add_argument("--input", dest="inputs", action="append", metavar="[NAME=]FILE",
                   help="read a file instead of a microphone ('-' = raw 16-bit PCM on stdin); repeatable")
    p.add_argument("--fast", action="store_true", help="with --input FILE: as fast as possible, not in real time")
    p.add_argument("--demo", action="store_true",
                   help="play the demo (three enrolled voices and a stranger) instead of listening; its events "
                        "carry \"demo\": true")
    _model_flags(p)
    p.add_argument("--events", metavar="FILE", help="append JSON-lines events to FILE ('-' = stdout)")
    p.add_argument("--no-ui", action="store_true",
                   help="log lines on stderr (ISO time and level; journald's priorities under systemd) instead of "
                        "the terminal UI: for a service")
    p.add_argument("--metrics", dest="metrics.listen", metavar="HOST:PORT",
                   help="serve Prometheus /metrics and /health here, '' = off [metrics.listen]")
    p.add_argument("--log-level", dest="log.level", choices=choices("log.level"),
                   help="with --no-ui: the least important lines logged; debug logs every scored window [log.level]")
    p.add_argument("--window", dest="stream.window_s", type=float, metavar="S",
                   help="scored window in seconds (default: the model's) [stream.window_s]")
    p.add_argument("--hop", dest="stream.hop_s", type=float, metavar="S",
                   help="hop between windows in seconds (default: the model's) [stream.hop_s]")
    _meeting_flags(p)
    p.add_argument("--meeting", action="store_true",
                   help="meeting mode: voices clustered as they come (relabel events when it changes its mind), "
                        "turns, enrolled names and guests, RTTM and a summary [meeting]")

    p = sub.add_parser("label", parents=[common], help="label who spoke when in a recording (RTTM)",
                       description="Meeting mode over a whole recording: every voiced window is clustered at "
                                   "once when the file ends (the number of speakers found, with the model's own "
                                   "thresholds), turns on 0.1-s frames, enrolled names and guests, an RTTM file "
                                   "and a summary table.")
    p.add_argument("input", metavar="FILE", help="the recording")
    _model_flags(p)
    _meeting_flags(p)
    p.add_argument("--events", metavar="FILE", help="append JSON-lines events to FILE ('-' = stdout)")

    p = sub.add_parser("enroll", parents=[common], help="add a voice to the gallery (no training needed)",
                       description="Enroll NAME from recordings (--input) or live from a microphone (--device), after "
                                   "quality checks: enough voiced speech, not clipped, not too quiet, one voice. "
                                   "Enrolling a name again adds to its voiceprint.")
    p.add_argument("name", help="the speaker's name")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", type=Path, metavar="FILE", help="recordings of this speaker")
    source.add_argument("--device", metavar="ID", help="record live from this input device")
    source.add_argument("--from-guest", metavar="LABEL",
                        help="a guest of a labelled meeting, e.g. 'Guest 2' (with --guests FILE)")
    p.add_argument("--guests", type=Path, metavar="FILE", help="the meeting's guests file (written next to its RTTM)")
    p.add_argument("--seconds", type=float, metavar="S", help="voiced seconds to record live [enroll.min_voiced_s]")
    _model_flags(p)

    p = sub.add_parser("speakers", parents=[common], help="list, remove, export or import enrolled voices",
                       description="Manage the gallery ([gallery] path): list (default), remove NAME, export FILE, "
                                   "import FILE.")
    p.add_argument("action", nargs="?", default="list", choices=("list", "remove", "export", "import"))
    p.add_argument("target", nargs="?", help="NAME for remove, FILE for export and import")

    p = sub.add_parser("verify", parents=[common], help="accept or reject a claimed identity",
                       description="Score FILE against NAME's voiceprint: accept (exit 0) or reject (exit 1), with "
                                   "the score and threshold.")
    p.add_argument("name")
    p.add_argument("file", type=Path)
    _model_flags(p)

    p = sub.add_parser("calibrate", parents=[common], help="set the gallery's threshold from your own voices",
                       description="Measure the decision threshold on the enrolled speakers' held-out windows "
                                   "(targets) and recordings of other voices (impostors): the lowest threshold whose "
                                   "false-accept rate is at most --far. Then replays every impostor recording through "
                                   "the door's rule as a visit and raises the door's threshold until at most "
                                   "--visit-far of those visits would be granted. Reports FAR, FRR, EER and the visit "
                                   "rates and stores both thresholds in the gallery, where operating_point 'auto' picks "
                                   "them up.")
    p.add_argument("--impostors", nargs="+", type=Path, metavar="PATH",
                   help="audio files or folders of voices that are not enrolled (recommended: 20+ people)")
    p.add_argument("--far", dest="calibrate.target_far", type=float, metavar="RATE",
                   help="target false-accept rate, e.g. 0.01 [calibrate.target_far]")
    p.add_argument("--visit-far", dest="calibrate.target_visit_far", type=float, metavar="RATE",
                   help="target share of impostor visits the door grants [calibrate.target_visit_far]")
    p.add_argument("--dry-run", action="store_true", help="report only; do not store the threshold")
    _model_flags(p)

    p = sub.add_parser("devices", parents=[common], help="list audio input devices",
                       description="List the audio input devices PortAudio sees, with their default sample rates.")

    p = sub.add_parser("door", parents=[common], help="operate the door hook: `spkrec door test NAME`",
                       description="test NAME: fire the configured door hook once with a synthetic grant for NAME "
                                   "(reason \"test\"), through the same chain as a real one: audit log, second factor, "
                                   "lock command, webhook. Exit 0 when the lock was actuated, 1 when a hook failed.")
    p.add_argument("action", choices=("test",))
    p.add_argument("name", help="an authorised name ([door] authorized)")
    p.add_argument("--stream", metavar="INPUT", default="",
                   help="use the door of [inputs.INPUT] (its [inputs.INPUT.door] keys over [door])")

    p = sub.add_parser("systemd-unit", parents=[common],
                       help="print the systemd unit that runs this install as a service",
                       description="Print the packaged systemd unit (README, Run as a service) with ExecStart pointing "
                                   "at this install's spkrec-live: the system unit (own user, audio group, hardening) "
                                   "or, with --user, the user unit for your session's microphone.")
    p.add_argument("--user", action="store_true", help="the user-session unit (systemctl --user)")

    p = sub.add_parser("config", parents=[common],
                       help="print the configuration in force, and where each value came from",
                       description="Print the merged configuration as TOML: the packaged defaults, the config file "
                                   "found (--config, $SPKREC_CONFIG, $XDG_CONFIG_HOME/spkrec/config.toml, "
                                   "/etc/spkrec/config.toml: the first that exists) and flags, each key followed by "
                                   "where its value came from. Exits 2 with one line if the configuration is invalid.")
    p.add_argument("--plain", action="store_true", help="TOML only, without the origin comments")

    p = sub.add_parser("doctor", parents=[common], help="check this install: packages, torch, audio, model, folders",
                       description="Check the install the way a support engineer would, one line per check (✓ fine, "
                                   "! look at this, ✗ broken, with the fix): Python and core packages, the training "
                                   "extra (torch, torchaudio, torchvision each run once), ONNX Runtime and its "
                                   "providers, PortAudio and input devices, the model's checksum, the config in force, "
                                   "the gallery and cache folders, voiceprints made with another model, and the int8 "
                                   "copy's agreement with fp32 on this CPU. Exit 0 when nothing is ✗, else 1.")
    p.add_argument("--json", action="store_true", help="one JSON object: ok, seconds, checks")
    return {"identify": cmd_identify, "live": cmd_live, "devices": cmd_devices, "enroll": cmd_enroll,
            "speakers": cmd_speakers, "verify": cmd_verify, "calibrate": cmd_calibrate, "label": cmd_label,
            "config": cmd_config, "door": cmd_door, "systemd-unit": cmd_systemd_unit}


def _meeting_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rttm", metavar="FILE", help="write closed turns as NIST RTTM to FILE")
    p.add_argument("--guests", metavar="FILE",
                   help="save the guests' voiceprints to FILE (default: next to the RTTM, .guests.json)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="spkrec", description="Streaming speaker identification: train a ResNet50 speaker model on your "
                                   "recordings, export one ONNX file, and serve it live with ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"spkrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = register(sub, common)
    for entry in sorted(entry_points(group="spkrec.commands"), key=lambda e: e.name):
        handlers.update(entry.load()(sub, common))
    return parser, handlers


def _overrides(args: argparse.Namespace) -> dict:
    """Flags whose dest is a dotted config key override that key."""
    return {key: value for key, value in vars(args).items() if "." in key and value is not None}


def run(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.command == "doctor":  # reports a broken config as one of its checks instead of stopping at it
        from spkrec.daemon.commands.doctor import doctor

        return doctor(args.config, args.json)
    try:
        cfg = load_config(args.config, _overrides(args))
        return handlers[args.command](args, cfg)
    except SpkrecError as exc:
        print(f"spkrec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in TRAIN_MODULES:
            print(f"spkrec: error: `spkrec {args.command}` needs the training extra ({exc.name} is missing): "
                  "pip install 'spkrec[train]'", file=sys.stderr)
            return 2
        raise
    except (ImportError, OSError) as exc:
        broken = _broken_train_module(exc)
        if broken is None:
            raise
        print(f"spkrec: error: `spkrec {args.command}` cannot load {broken} ({type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[-1][:160]}): `spkrec doctor` names the fix", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:  # apt-get, dpkg-deb, pip... (default-model --rebuild, weights)
        print(f"spkrec: error: {_program_failed(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spkrec: interrupted", file=sys.stderr)
        return 130


def _broken_train_module(exc: BaseException) -> str | None:
    """The training package (torch, torchaudio, ...) whose own code raised ``exc`` while loading,
    e.g. a torchaudio built for another torch; None when the error is not theirs."""
    tb = exc.__traceback__
    while tb is not None:  # the outermost of their frames: the package being imported, not torch's loader
        found = next((p for p in Path(tb.tb_frame.f_code.co_filename).parts if p in TRAIN_MODULES), None)
        if found:
            return found
        tb = tb.tb_next
    return None


def _program_failed(exc: subprocess.CalledProcessError) -> str:
    """One line for a helper program that failed: which command, its exit status, its last words."""
    command = shlex.join(map(str, exc.cmd)) if isinstance(exc.cmd, (list, tuple)) else str(exc.cmd)
    said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    last = said.strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
    return f"`{command}` failed: {last[0]}"


def main() -> None:
    sys.exit(run())


def live_main() -> None:
    sys.exit(run(["live", *sys.argv[1:]]))


def cmd_live(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.live import run_live

    return run_live(args, cfg)


def cmd_label(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.live import run_live

    args.mode, args.inputs, args.fast, args.no_ui = "label", [args.input], True, True  # daemon/modes.py: "label"
    return run_live(args, cfg)


def _engine(args: argparse.Namespace, cfg: Config):
    from spkrec.daemon.default_model import open_engine
    from spkrec.daemon.service.logs import console_warning

    return open_engine(cfg, console_warning(Console(stderr=True)))


def cmd_enroll(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.audio import load_audio
    from spkrec.models.gallery import Gallery

    from spkrec.models.gallery import check_name

    from spkrec.daemon.commands import enroll

    check_name(args.name)  # a reserved or malformed name fails before any audio is read
    engine = _engine(args, cfg)
    if args.from_guest:
        return _enroll_guest(args, cfg, engine)
    rate = engine.info.sample_rate
    if args.input:
        recordings = [load_audio(path, rate) for path in args.input]
    else:
        seconds = args.seconds or cfg.enroll.min_voiced_s
        recordings = [enroll.record(args.device, rate, seconds, cfg.vad, cfg.audio.block_s, Console(stderr=True))]
    sample = enroll.gather(recordings, rate, cfg.vad)
    enroll.check(sample, None, cfg.enroll)
    embeddings = enroll.embed(engine, sample)
    enroll.check(sample, embeddings, cfg.enroll, engine.info.thresholds)
    speaker = Gallery(cfg.gallery_path()).add(args.name, engine.info.fingerprint, embeddings, sample.voiced_s)
    print(f"enrolled {speaker.name}: {speaker.voiced_s:.1f} s voiced in total, {speaker.windows} windows, "
          f"quality {speaker.quality:.2f} ({cfg.gallery_path()})")
    return 0


def _enroll_guest(args: argparse.Namespace, cfg: Config, engine) -> int:
    """A guest of a labelled meeting saved under a real name: no recording needed."""
    from spkrec.models.errors import GalleryError
    from spkrec.models.gallery import Gallery

    from spkrec.daemon.meeting.guests import load_guest

    if args.guests is None:
        raise GalleryError("--from-guest needs --guests FILE (written next to the meeting's RTTM)")
    fingerprint, windows, voiced_s = load_guest(args.guests, args.from_guest)
    if fingerprint != engine.info.fingerprint:
        raise GalleryError(f"{args.guests} was made with another model ({fingerprint}): label the meeting again "
                           "with this model, or enroll with that one")
    speaker = Gallery(cfg.gallery_path()).add(args.name, fingerprint, windows, voiced_s)
    print(f"enrolled {speaker.name} from {args.from_guest}: {speaker.voiced_s:.1f} s voiced in total, "
          f"{speaker.windows} windows, quality {speaker.quality:.2f} ({cfg.gallery_path()})")
    return 0


def cmd_speakers(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.errors import GalleryError
    from spkrec.models.gallery import Gallery

    if args.action != "list" and not args.target:
        raise GalleryError(f"`spkrec speakers {args.action}` needs a {'NAME' if args.action == 'remove' else 'FILE'}")
    gallery = Gallery(cfg.gallery_path())
    if args.action == "remove":
        gallery.remove(args.target)
        print(f"removed {args.target}")
    elif args.action == "export":
        print(f"exported {gallery.export(Path(args.target))} speakers to {args.target}")
    elif args.action == "import":
        print(f"imported {gallery.import_(Path(args.target))} speakers from {args.target}")
    else:
        _warn_if_readable(cfg.gallery_path())
        table = Table(title=f"enrolled speakers ({cfg.gallery_path()})")
        for column in ("name", "enrolled", "voiced", "windows", "quality", "model"):
            table.add_column(column)
        for s in gallery.speakers():
            table.add_row(s.name, s.enrolled, f"{s.voiced_s:.1f} s", str(s.windows), f"{s.quality:.2f}", s.fingerprint)
        Console().print(table)
    return 0


def _warn_if_readable(path: Path) -> None:
    """Voiceprints are biometric data: say so when other users can read them (galleries made
    before spkrec created them owner-only, or copied in with a loose umask)."""
    from spkrec.models.private import readable_by_others

    loose = [str(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if readable_by_others(p)]
    if loose:
        _warning(f"{path} can be read by other users (voiceprints are personal data): chmod 600 {' '.join(loose)}")


def _warning(text: str) -> None:
    """One yellow line on stderr, never wrapped, with no markup read from names or paths."""
    Console(stderr=True, soft_wrap=True).print(f"warning: {text}", style="yellow", markup=False, highlight=False)


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.audio import load_audio
    from spkrec.models.errors import AudioError, GalleryError
    from spkrec.models.gallery import Gallery
    from spkrec.models.scoring import mean_embedding
    from spkrec.models.thresholds import decision_point

    from spkrec.daemon.commands import enroll

    engine = _engine(args, cfg)
    if not cfg.gallery_path().is_file():
        raise GalleryError(f"no gallery at {cfg.gallery_path()} yet: enroll {args.name} first (spkrec enroll)")
    gallery = Gallery(cfg.gallery_path())
    speaker = gallery.get(args.name)
    if speaker.fingerprint != engine.info.fingerprint:
        raise GalleryError(f"'{args.name}' was enrolled with another model ({speaker.fingerprint}): re-enroll, or "
                           "verify with that model")
    sample = enroll.gather([load_audio(args.file, engine.info.sample_rate)], engine.info.sample_rate, cfg.vad)
    if sample.voiced.size == 0:
        raise AudioError(f"{args.file} has no voiced speech to verify")
    score = float(mean_embedding(enroll.embed(engine, sample)) @ speaker.voiceprint)
    threshold = decision_point(cfg, engine.info, gallery).threshold
    accepted = score >= threshold
    print(f"{'accept' if accepted else 'reject'}: {args.file} as {args.name}, score {score:.3f}, threshold {threshold:.3f}")
    return 0 if accepted else 1


def cmd_calibrate(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.errors import GalleryError
    from spkrec.models.gallery import Gallery

    from spkrec.daemon.commands.calibrate import calibrate, impostor_windows

    console = Console(stderr=True)
    engine = _engine(args, cfg)
    if not cfg.gallery_path().is_file():
        raise GalleryError(f"no gallery at {cfg.gallery_path()} yet: enroll speakers first (spkrec enroll)")
    gallery = Gallery(cfg.gallery_path())
    impostors = impostor_windows(engine, args.impostors, cfg, console) if args.impostors else []
    result, visits = calibrate(engine, gallery, impostors, cfg)
    table = Table(title=f"calibration of {cfg.gallery_path()} ({len(result.speakers)} speakers, "
                        f"{len(impostors)} impostor recordings)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (("threshold", f"{result.threshold:.3f}"),
                        ("false accepts (FAR)", f"{result.far:.2%}  (target {result.target_far:.2%})"),
                        ("false rejects (FRR)", f"{result.frr:.2%}"),
                        ("EER", f"{result.eer:.2%}"), ("minDCF (p=0.01)", f"{result.min_dcf:.3f}"),
                        ("target / impostor trials", f"{result.n_target} / {result.n_nontarget}"),
                        ("scores averaged over", f"{result.smoothing} windows"),
                        ("door threshold", f"{visits.threshold:.3f}  ({visits.wins} of {visits.of_last} windows)"),
                        ("impostor visits granted", f"{visits.false_grants} of {visits.n_impostor_visits}  "
                                                    f"(target {visits.target:.2%})"),
                        ("own visits refused", f"{visits.false_rejects} of {visits.n_target_visits}")):
        table.add_row(name, value)
    Console().print(table)
    if result.n_nontarget * result.target_far < 10:
        console.print(f"[yellow]only {result.n_nontarget} impostor trials: a {result.target_far:.1%} false-accept "
                      "rate is barely measurable; add more impostor recordings[/]")
    if visits.n_impostor_visits * visits.target < 1:
        console.print(f"[yellow]only {visits.n_impostor_visits} impostor visits: a {visits.target:.1%} false-grant "
                      f"rate needs at least {int(1 / max(visits.target, 1e-9))}; the door threshold is set so none of "
                      "them would be granted[/]")
    if args.dry_run:
        return 0
    gallery.set_calibration(engine.info.fingerprint, {**result.to_dict(), "door": visits.__dict__})
    print(f"stored threshold {result.threshold:.3f} and door threshold {visits.threshold:.3f} in {cfg.gallery_path()} "
          "(used where decision.operating_point is 'auto' or 'calibrated')")
    return 0


def cmd_door(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.daemon.door.hook import fire_test

    if args.stream and args.stream not in cfg.inputs:
        raise SpkrecError(f"no input named '{args.stream}' in the config ([inputs.{args.stream}])")
    door = cfg.door_for(args.stream)
    decision, result = fire_test(door, args.name, args.stream)
    steps = []
    for key in ("second_factor", "command", "url"):
        if key in result:
            outcome = result[key]
            detail = f"exit {outcome['exit']}" if "exit" in outcome else \
                f"HTTP {outcome['status']}" if "status" in outcome else outcome.get("error", "")
            steps.append(f"{key.replace('_', ' ')} {'ok' if outcome['ok'] else 'FAILED'} ({detail})")
    audit = f"; audit log {door.audit_log}" if door.audit_log else ""
    verdict = "lock actuated" if result.get("ok") else f"FAILED: {result.get('error', 'failed')}"
    print(f"door test for {args.name}: {verdict}; {', '.join(steps) or 'no step ran'} (decision {decision.id}{audit})")
    return 0 if result.get("ok") else 1


def cmd_systemd_unit(args: argparse.Namespace, cfg: Config) -> int:
    from importlib import resources

    unit = resources.files("spkrec.daemon.service").joinpath("systemd", "user" if args.user else "system", "spkrec.service")
    text = unit.read_text(encoding="utf-8")
    here = Path(sys.argv[0]).absolute().with_name("spkrec-live")  # next to this `spkrec` (a venv, pipx's bin)
    live = here if here.is_file() else Path(shutil.which("spkrec-live") or "")
    if live.name:
        text = re.sub(r"^ExecStart=\S+", f"ExecStart={live}", text, count=1, flags=re.M)
    print(text, end="")
    return 0


def cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.config import SYSTEM_CONFIG, to_toml, user_config

    if not args.plain:
        searched = ["--config" if args.config else None, "$SPKREC_CONFIG" if os.environ.get("SPKREC_CONFIG") else None,
                    str(user_config()), str(SYSTEM_CONFIG)]
        print(f"# spkrec {__version__}: the packaged defaults"
              + (f", merged with {cfg.file}" if cfg.file else " (no config file found)")
              + (", and command-line flags" if FLAG in cfg.origins.values() else ""))
        print(f"# looked for: {', '.join(s for s in searched if s)} (the first that exists is used)")
        stray = Path("config.toml")
        if stray.is_file() and (cfg.file is None or stray.resolve() != cfg.file.resolve()):
            print(f"# ./config.toml is not read from the working directory; pass --config {stray} to use it")
        print()
    print(to_toml(cfg, origins=not args.plain), end="")
    return 0


def cmd_devices(args: argparse.Namespace, cfg: Config) -> int:
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


def cmd_identify(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.thresholds import decision_point

    from spkrec.daemon.commands.identify import identify_file, skipped_voices
    from spkrec.daemon.live import open_gallery
    from spkrec.daemon.pipeline.roster import Roster

    files = list(args.files)
    if not cfg.model.path and files and files[0].suffix == ".onnx" and len(files) > 1:
        cfg.model.path = str(files.pop(0))
    engine = _engine(args, cfg)
    gallery = open_gallery(cfg)
    skipped = skipped_voices(gallery, engine.info.fingerprint)
    if skipped:
        _warning(skipped)
    roster = Roster(engine.info, gallery, cfg.decision.trained_speakers)
    threshold = decision_point(cfg, engine.info, gallery).threshold
    results = [identify_file(engine, roster, path, threshold, cfg.decision.margin, cfg.vad) for path in files]
    if args.json:
        for result in results:
            print(json.dumps(result.as_dict()))
    else:
        _print_identify(results, threshold)
    failures = [r for r in results if r.error]
    for r in failures:
        print(f"spkrec: error: {r.error}", file=sys.stderr)
    return 1 if failures else 0


def _print_identify(results, threshold: float) -> None:
    table = Table(title=f"identify (threshold {threshold:.3f})")
    for column in ("file", "speaker", "score", "runner-up"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for r in results:
        if r.decision is None:
            continue
        d = r.decision
        runner = f"{d.candidates[1][0]} {d.candidates[1][1]:.3f}" if len(d.candidates) > 1 else "-"
        table.add_row(r.path.name, d.label, f"{d.score:.3f}", runner)
    Console().print(table)
