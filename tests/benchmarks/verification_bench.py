"""Benchmark: open-set verification and the door policy on voices no model was trained on,
spkrec next to Resemblyzer, on exactly the same audio windows and trials, in one run.

Speakers (all real LibriSpeech, read from ../shared/data, never copied into the repo):
- enrolled: the 10 test-other speakers; the first 6 recordings of each enroll (the daemon's own
  VAD, windows and quality path), the other 4 are their test attempts;
- impostors: every 5th of the 251 train-clean-100 voices (sorted by id), alternately for
  calibration (26) and as strangers at the door (25); the other 200 voices train spkrec's
  model (``--run``; trained here with ``spkrec train`` when the folder has no model yet).

``--model PATH`` instead scores an existing spkrec ONNX model (nothing is trained). When its
metadata names held-out voices (``training['held_out_voices']``, as the shipped base model's
does: the train-clean-100 voices kept out of its training for model selection), those voices
are the strangers at the door, so the strangers are voices the model never heard; the
calibration impostors stay the calibration share above minus any held-out voice, and they *were*
in such a model's training (the base model trained on every other train-clean-100 voice). The
enrolled test-other voices were never trained on. A model without that metadata keeps the split
above, and whether it heard the strangers is then unknown.

Measured, for each system:
1. verification on utterances (a test recording's mean embedding against each voiceprint):
   EER and minDCF (p_target 0.01), raw cosine and with adaptive s-norm (cohort: the
   calibration impostors' windows, top 100);
2. ``spkrec calibrate``'s procedure (held-out enrollment windows + calibration impostors,
   target FAR 1 %): the threshold and its EER;
3. the door at default settings (3 of the last 4 windows, 1.5 s voiced, default smoothing and
   margin, the calibrated threshold, all ten enrolled voices authorised), each test attempt
   replayed through the daemon's own pipeline (file source, VAD, windower, decider, door
   policy): FRR = attempts of an enrolled voice that did not open for that voice; FAR =
   stranger attempts that opened the door; wrong-name grants = attempts that opened for
   someone else's name; then again at the door threshold that ``spkrec calibrate`` derives by
   replaying each calibration impostor (all of a voice's recordings as one long visit) through
   the door rule, target: 1 % of visits.

Resemblyzer scores the same 2-s voiced windows (its own partial-utterance averaging inside a
window) after its own volume normalisation. It is not a dependency of spkrec; install it into
the venv without its dependency on the original webrtcvad (webrtcvad-wheels provides it):

    .venv/bin/pip install --no-deps resemblyzer && .venv/bin/pip install librosa
    .venv/bin/python tests/benchmarks/verification_bench.py --run /tmp/bench-run \
        [--out tests/benchmarks/results/verification.json]
    .venv/bin/python tests/benchmarks/verification_bench.py --model models/base/spkrec-base.onnx \
        --out tests/benchmarks/results/verification_base.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import machine  # noqa: E402

from spkrec.daemon.commands import enroll  # noqa: E402
from spkrec.daemon.pipeline.decisions import Decider, DeciderSettings  # noqa: E402
from spkrec.daemon.door.hook import DoorSink  # noqa: E402
from spkrec.daemon.pipeline.events import DoorEvent  # noqa: E402
from spkrec.daemon.pipeline.run import Pipeline, Stream  # noqa: E402
from spkrec.daemon.pipeline.sources import FileSource  # noqa: E402
from spkrec.daemon.pipeline.state import LiveState  # noqa: E402
from spkrec.daemon.pipeline.vad import Vad  # noqa: E402
from spkrec.daemon.pipeline.windowing import Windower  # noqa: E402
from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.calibration import DoorRule, calibrate_open_set, calibrate_visits, rates_at, verification  # noqa: E402
from spkrec.models.config import Config  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.models.scoring import as_norm, cosine_scores, mean_embedding, normalize  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
ENROLLED = DATA / "librispeech-test-other"
MANY = DATA / "librispeech-train-clean-100"
ENROLL_FILES = 6
COHORT_TOP_K = 100


def voice_split(held_out: list[str] | None = None) -> tuple[list[Path], list[Path], list[Path]]:
    """(training voices, calibration impostors, stranger impostors) of train-clean-100.

    ``held_out``: train-clean-100 voice ids a given model never heard (see `held_out_voices`);
    they become the strangers, and the calibration impostors are the usual share without them
    (the training list is then only this benchmark's own split, not the model's)."""
    voices = sorted(p for p in MANY.iterdir() if p.is_dir())
    train = [v for i, v in enumerate(voices) if i % 5]
    calibration = [v for i, v in enumerate(voices) if i % 10 == 0]
    strangers = [v for i, v in enumerate(voices) if i % 10 == 5]
    if held_out:
        missing = sorted(set(held_out) - {v.name for v in voices})
        if missing:
            raise SystemExit(f"held-out voices not in {MANY}: {', '.join(missing)}")
        strangers = [v for v in voices if v.name in held_out]
        calibration = [v for v in calibration if v.name not in held_out]
        train = [v for v in train if v.name not in held_out]
    return train, calibration, strangers


def held_out_voices(info) -> list[str]:
    """The train-clean-100 voice ids (folder names) a model's metadata says it never trained on
    (``training['held_out_voices']``, labels like ``libri-1234``); empty when it says nothing."""
    labels = (info.training or {}).get("held_out_voices") or []
    return sorted(label.removeprefix("libri-") for label in labels if label.startswith("libri-"))


def run_facts() -> dict[str, Any]:
    """Date and the machine as `nproc` and /proc/cpuinfo see it, next to live_bench.machine()."""
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": int(nproc) if nproc.isdigit() else nproc}


TRAIN_FLAGS = ["--min-steps", "500", "--freeze-layers", "2", "--seed", "0"]


def train_model(run_dir: Path, voices: list[Path]) -> None:
    """spkrec's model for this benchmark: the real CLI on a folder of the 200 training voices."""
    folder = Path(tempfile.mkdtemp(prefix="spkrec-bench-voices-"))
    for voice in voices:
        (folder / voice.name).symlink_to(voice, target_is_directory=True)
    subprocess.run([str(Path(sys.executable).with_name("spkrec")), "train", str(folder), "--out", str(run_dir),
                    *TRAIN_FLAGS], check=True)


class ResemblyzerEngine:
    """Resemblyzer's GE2E encoder behind the two calls the daemon's pipeline makes of an engine."""

    provider, last_ms = "cpu", 0.0

    def __init__(self, info) -> None:
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import normalize_volume

        self.encoder, self.normalize_volume = VoiceEncoder("cpu", verbose=False), normalize_volume
        self.path = Path("resemblyzer")
        self.info = info  # the same windows and hop as spkrec's model, so both score identical audio

    def embed(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = np.stack([self.encoder.embed_utterance(self.normalize_volume(w.astype(np.float32), -30, True))
                        for w in batch])
        self.last_ms = (time.perf_counter() - start) * 1000 / max(len(batch), 1)
        return out

    embed_windows = embed


def windows_of(engine: Any, paths: list[Path], rate: int, cfg: Config) -> np.ndarray:
    """Voiced window embeddings of recordings, exactly as `spkrec enroll` makes them."""
    sample = enroll.gather([load_audio(p, rate) for p in paths], rate, cfg.vad)
    return enroll.embed(engine, sample)


def door_attempt(engine: Any, path: Path, names: tuple[str, ...], prints: np.ndarray, threshold: float,
                 cfg: Config, window_s: float, hop_s: float, rate: int) -> list[DoorEvent]:
    """One visit at the door: the recording through the daemon's own pipeline and door policy."""
    doors: list[DoorEvent] = []
    door = DoorSink(cfg.door, lambda e: doors.append(e) if isinstance(e, DoorEvent) else None)
    source = FileSource(path, rate, cfg.audio.block_s, realtime=False)
    settings = DeciderSettings(threshold, cfg.decision.margin, cfg.stream.smoothing, cfg.vad.min_voiced_ratio)
    stream = Stream(source, Vad(rate, cfg.vad.frame_ms, cfg.vad.aggressiveness), Windower(rate, window_s, hop_s),
                    Decider(lambda: (names, prints), settings),
                    LiveState(source=source.name, rate=rate, provider=engine.provider, hop_s=hop_s, timeline_s=60),
                    sinks=[door])
    Pipeline([stream], engine).run(threading.Event())
    return doors


def door_trials(engine: Any, tests: list, stranger_files: list[Path], names: tuple[str, ...], prints: np.ndarray,
                threshold: float, cfg: Config, window_s: float, hop_s: float, rate: int) -> dict[str, Any]:
    """Every test recording and every stranger's as one visit at the door, at ``threshold``."""
    misses = wrong = opened_for_strangers = 0
    visits = []  # each attempt's door decisions, for reading the rates
    for speaker, path in [*tests, *(("stranger", p) for p in stranger_files)]:
        doors = door_attempt(engine, path, names, prints, threshold, cfg, window_s, hop_s, rate)
        granted = [d.label for d in doors if d.granted]
        if speaker == "stranger":
            opened_for_strangers += bool(granted)
        else:
            misses += speaker not in granted
            wrong += any(label != speaker for label in granted)
        visits.append({"speaker": speaker, "file": path.name, "granted": granted,
                       "denied": [f"{d.label}: {d.reason} ({d.score:.3f})" for d in doors if not d.granted]})
    return {"threshold": round(threshold, 4), "attempts": len(tests), "frr": round(misses / len(tests), 4),
            "wrong_name_grants": wrong, "stranger_attempts": len(stranger_files),
            "far": round(opened_for_strangers / len(stranger_files), 4), "visits": visits}


def evaluate(engine: Any, rate: int, window_s: float, hop_s: float,
             held_out: list[str] | None = None) -> dict[str, Any]:
    cfg = Config()
    _, calibration_voices, strangers = voice_split(held_out)
    speakers = sorted(p for p in ENROLLED.iterdir() if p.is_dir())
    started = time.perf_counter()
    enrolled, tests = {}, []  # tests: (speaker, path)
    for speaker in speakers:
        files = sorted(speaker.glob("*.flac"))
        enrolled[speaker.name] = windows_of(engine, files[:ENROLL_FILES], rate, cfg)
        tests += [(speaker.name, f) for f in files[ENROLL_FILES:]]
    names = tuple(sorted(enrolled))
    prints = np.stack([mean_embedding(enrolled[n]) for n in names])
    calibration = [windows_of(engine, sorted(v.glob("*.flac")), rate, cfg) for v in calibration_voices]
    stranger_files = [sorted(v.glob("*.flac"))[0] for v in strangers]

    # 1. utterance-level verification, raw and AS-norm
    test_embs = [mean_embedding(windows_of(engine, [p], rate, cfg)) for _, p in tests]
    stranger_embs = [mean_embedding(windows_of(engine, [p], rate, cfg)) for p in stranger_files]
    all_tests = np.stack(test_embs + stranger_embs)
    truth = [names.index(s) for s, _ in tests] + [-1] * len(stranger_embs)
    raw = cosine_scores(all_tests, prints)
    cohort = normalize(np.concatenate(calibration))
    normed = as_norm(raw, prints @ cohort.T, normalize(all_tests) @ cohort.T, COHORT_TOP_K)
    utterance = {}
    for kind, scores in (("raw", raw), ("as_norm", normed)):
        mask = np.zeros_like(scores, dtype=bool)
        for row, column in enumerate(truth):
            if column >= 0:
                mask[row, column] = True
        v = verification(scores[mask], scores[~mask])
        utterance[kind] = {"eer": round(v.eer, 4), "min_dcf": round(v.min_dcf, 4), "targets": v.n_target,
                           "nontargets": v.n_nontarget}

    # 2. calibrate as `spkrec calibrate` does
    guard = int(np.ceil(window_s / hop_s))
    cal = calibrate_open_set(enrolled, calibration, cfg.calibrate.target_far, cfg.stream.smoothing,
                             cfg.calibrate.holdout, guard)

    # 3. the door at default settings, everyone enrolled authorised: at the per-window threshold, and
    # at the door threshold `spkrec calibrate` now derives from the impostors replayed as visits
    cfg.door.authorized = list(names)
    rule = DoorRule(cfg.door.wins, cfg.door.of_last, cfg.stream.smoothing, cfg.decision.margin)
    visit_cal = calibrate_visits(enrolled, calibration, set(names), cal.threshold, cfg.calibrate.target_visit_far,
                                 rule, cfg.calibrate.holdout, guard)
    doors_at = {"window": door_trials(engine, tests, stranger_files, names, prints, cal.threshold, cfg, window_s,
                                      hop_s, rate)}
    doors_at["visit"] = door_trials(engine, tests, stranger_files, names, prints, visit_cal.threshold, cfg, window_s,
                                    hop_s, rate) if visit_cal.threshold != cal.threshold else doors_at["window"]
    # window-level rates at the calibrated threshold on the door trials' own utterances, for reference
    frr, far = rates_at(raw[np.arange(len(tests)), truth[:len(tests)]], raw[len(tests):].ravel(), cal.threshold)
    return {
        "utterance": utterance,
        "calibration": {"threshold": round(cal.threshold, 4), "eer": round(cal.eer, 4), "far": round(cal.far, 4),
                        "frr": round(cal.frr, 4), "targets": cal.n_target, "nontargets": cal.n_nontarget},
        "visit_calibration": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in visit_cal.__dict__.items()},
        "utterance_rates_at_threshold": {"frr": round(frr, 4), "far": round(far, 4)},
        "door": doors_at["window"],
        "door_at_visit_threshold": doors_at["visit"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(results: dict[str, Any]) -> str:
    rows = ["| system | EER (utt.) | minDCF | EER AS-norm | minDCF AS-norm | calibrated thr. | door FRR | "
            "door FAR (strangers) | wrong-name grants | door thr. (visits) | door FRR | door FAR |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["systems"].items():
        u, d, v = r["utterance"], r["door"], r["door_at_visit_threshold"]
        rows.append(f"| {name} | {u['raw']['eer']:.1%} | {u['raw']['min_dcf']:.3f} | {u['as_norm']['eer']:.1%} | "
                    f"{u['as_norm']['min_dcf']:.3f} | {r['calibration']['threshold']:.3f} | {d['frr']:.1%} "
                    f"({d['attempts']}) | {d['far']:.1%} ({d['stranger_attempts']}) | {d['wrong_name_grants']} | "
                    f"{v['threshold']:.3f} | {v['frr']:.1%} | {v['far']:.1%} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="spkrec run folder (trained here if it has no model)")
    which.add_argument("--model", type=Path, help="an existing spkrec ONNX model (no training); its held-out "
                       "voices, if its metadata names them, are the strangers")
    parser.add_argument("--out", type=Path, default=REPO / "tests/benchmarks/results/verification.json")
    parser.add_argument("--skip-resemblyzer", action="store_true")
    args = parser.parse_args()
    if args.model is None and not (args.run / "model.onnx").is_file():
        train_model(args.run, voice_split()[0])
    model = args.model if args.model is not None else args.run / "model.onnx"
    if not model.is_file():
        raise SystemExit(f"no model at {model}")
    engine = Engine(model, "cpu")
    info = engine.info
    held_out = held_out_voices(info) if args.model is not None else []
    _, calibration_voices, strangers = voice_split(held_out)
    systems = {(f"spkrec {model.name}" if args.model is not None else "spkrec (ResNet50, 200 voices)"): engine}
    if not args.skip_resemblyzer:
        systems["Resemblyzer 0.1.4 (GE2E)"] = ResemblyzerEngine(info)
    if held_out:
        protocol = (f"strangers at the door: the model's {len(strangers)} held-out train-clean-100 voices "
                    f"(training['held_out_voices']), never in its training; calibration impostors: "
                    f"{len(calibration_voices)} other train-clean-100 voices, which WERE in its training; "
                    "enrolled: the 10 test-other voices, never trained on")
    elif args.model is not None:
        protocol = ("the model names no held-out voices: default split (strangers and calibration impostors from "
                    "train-clean-100); whether the model heard them is unknown")
    else:
        protocol = ("default split: the model is trained here on the other 200 train-clean-100 voices; strangers, "
                    "calibration impostors and the enrolled test-other voices are all unseen by it")
    results = {"command": shlex.join([sys.executable, *sys.argv]), **run_facts(), "machine": machine(),
               "model": {"path": str(model), "fingerprint": info.fingerprint,
                         "training": {k: v for k, v in info.training.items() if k != "per_speaker"}},
               "protocol": protocol, "strangers": [v.name for v in strangers],
               "calibration_impostors": [v.name for v in calibration_voices]}
    if args.model is None:
        results["train"] = f"spkrec train <folder of the 200 training voices> --out RUN {shlex.join(TRAIN_FLAGS)}"
    results["systems"] = {name: evaluate(e, info.sample_rate, info.window_s, info.hop_s, held_out)
                          for name, e in systems.items()}
    print(results["protocol"])
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
