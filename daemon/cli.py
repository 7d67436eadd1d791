"""The ``spkrec`` command line: argument parsing, config, and one-line errors at the edge. It
parses and dispatches only: each command's work is a module of ``daemon/commands``.

Subcommands of other rooms (training) are found through the ``spkrec.commands`` entry-point
group, so this module never imports training code and ``spkrec --help`` needs no torch.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from spkrec.models import __version__
from spkrec.models.config import LOOKUP, Config, choices, load_config, lookup_text
from spkrec.models.errors import SpkrecError

Handler = Callable[[argparse.Namespace, Config], int]
TRAIN_MODULES = {"torch", "torchaudio", "torchvision", "matplotlib"}
# command -> (module of daemon/commands, function): imported only when that command runs
COMMANDS = {"identify": ("identify", "run"), "live": ("live", "run"), "label": ("live", "run_label"),
            "devices": ("devices", "run"), "enroll": ("enroll", "run"), "speakers": ("speakers", "run"),
            "verify": ("verify", "run"), "calibrate": ("calibrate", "run"), "config": ("show_config", "run"),
            "door": ("door_test", "run"), "systemd-unit": ("systemd_unit", "run"), "scales": ("scales", "run")}


def _command(module: str, function: str) -> Handler:
    def handler(args: argparse.Namespace, cfg: Config) -> int:
        return getattr(importlib.import_module(f"spkrec.daemon.commands.{module}"), function)(args, cfg)
    return handler


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH",
                        help=f"config file (else the first that exists of {', '.join(LOOKUP[1:])}; "
                             "`spkrec config` shows which)")
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

    p = sub.add_parser("scales", parents=[common], help="stamp a model's clustering scales (meetings need them)",
                       description="Measure the two clustering thresholds meetings use (README, Meetings) with MODEL "
                                   "on recordings of voices it never trained on, and write them into its metadata. "
                                   "The graph and fingerprint stay: enrolled voiceprints stay valid.")
    p.add_argument("model", type=Path, help="a spkrec ONNX model")
    p.add_argument("--voices", type=Path, required=True, metavar="DIR",
                   help="one folder per voice (DIR/<voice>/<audio files>), two voices or more, 11 s of speech each")
    p.add_argument("--out", type=Path, help="where to write the stamped model (default: MODEL, in place)")

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
                                   f"found ({lookup_text()}) and flags, each key followed by "
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
    return {name: _command(module, function) for name, (module, function) in COMMANDS.items()}


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


