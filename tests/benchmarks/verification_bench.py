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
1. utterances, one table: each test recording (and each stranger's) scored against each
   voiceprint, EER and minDCF (p_target 0.01), for a test embedded as the mean of its 2-s
   windows (the old way) or in one pass (models/utterance.py, as identify and verify do now),
   against a voiceprint made the gallery's way (the mean of the enrollment windows) or in one
   pass (8-s pieces of the enrollment audio, averaged); adaptive s-norm on the window mean
   (cohort: the calibration impostors' windows, top 100);
2. ``spkrec calibrate``'s procedure, each kind of score as `spkrec calibrate` measures it:
   windows (held-out enrollment windows + calibration impostors, target FAR 1 %); whole files
   (each calibration impostor recording in one pass against every voiceprint, target 1 %), and
   the FAR ``verify`` then has on held-out trials (every recording of every stranger voice
   against each voiceprint, and every test recording against the other voices' prints); and the
   same with calibration impostors the model never heard, as at a real site (half the stranger
   voices calibrate, the other half and the tests measure, then the halves swap);
3. the door (all ten enrolled voices authorised, default [door] keys): each calibration
   impostor recording replayed through the door's own visit code (daemon/door/replay.py) gives
   the door threshold (at most 1 % of impostor visits granted); then each test attempt and one
   recording of each stranger voice replayed through the daemon's own pipeline and door policy
   at that threshold: FRR = attempts of an enrolled voice that did not open for that voice;
   FAR = stranger attempts that opened the door; wrong-name grants = attempts that opened for
   someone else's name.

Resemblyzer scores the same audio (2-s voiced windows, or a whole utterance or visit in one
call: its own partial-utterance averaging inside) after its own volume normalisation. It is not a dependency of spkrec; install it into
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
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import machine  # noqa: E402

from spkrec.daemon.commands import enroll  # noqa: E402
from spkrec.daemon.door.config import rule_of  # noqa: E402
from spkrec.daemon.door.replay import critical, door_decisions, visits  # noqa: E402
from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.calibration import (calibrate_door, calibrate_open_set, calibrate_utterances, rates_at,  # noqa: E402
                                       verification)
from spkrec.models.config import Config  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.models.scoring import as_norm, cosine_scores, mean_embedding, normalize  # noqa: E402
from spkrec.models.utterance import embed_utterance  # noqa: E402

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

    provider, precision, precision_note, last_ms = "cpu", "fp32", "", 0.0

    def __init__(self, info) -> None:
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import normalize_volume

        self.encoder, self.normalize_volume = VoiceEncoder("cpu", verbose=False), normalize_volume
        self.path = self.source = Path("resemblyzer")
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


def door_trials(engine: Any, tests: list, stranger_files: list[Path], roster, threshold: float,
                cfg: Config) -> dict[str, Any]:
    """Every test recording and every stranger's as a visit at the door (replayed through the
    daemon's own pipeline, visit code and door policy), at ``threshold``."""
    misses = wrong = opened_for_strangers = 0
    visits_seen = []  # each attempt's door decisions, for reading the rates
    for speaker, path in [*tests, *(("stranger", p) for p in stranger_files)]:
        doors = door_decisions(engine, path, roster, cfg.door, cfg, threshold)
        granted = [d.label for d in doors if d.granted]
        if speaker == "stranger":
            opened_for_strangers += bool(granted)
        else:
            misses += speaker not in granted
            wrong += any(label != speaker for label in granted)
        visits_seen.append({"speaker": speaker, "file": path.name, "granted": granted,
                            "denied": [f"{d.label}: {d.reason} ({d.score:.3f})" for d in doors if not d.granted]})
    return {"threshold": round(threshold, 4), "attempts": len(tests), "frr": round(misses / len(tests), 4),
            "wrong_name_grants": wrong, "stranger_attempts": len(stranger_files),
            "far": round(opened_for_strangers / len(stranger_files), 4), "visits": visits_seen}


def eer_of(tests: np.ndarray, prints: np.ndarray, truth: list[int]) -> dict[str, Any]:
    """EER and minDCF of every test (rows) against every voiceprint; ``truth`` its voice, -1 a stranger."""
    scores = cosine_scores(tests, prints)
    mask = np.zeros_like(scores, dtype=bool)
    for row, column in enumerate(truth):
        if column >= 0:
            mask[row, column] = True
    v = verification(scores[mask], scores[~mask])
    return {"eer": round(v.eer, 4), "min_dcf": round(v.min_dcf, 4), "targets": v.n_target, "nontargets": v.n_nontarget}


def voiced_of(path: Path, rate: int, cfg: Config) -> np.ndarray:
    return enroll.gather([load_audio(path, rate)], rate, cfg.vad).voiced


def evaluate(engine: Any, rate: int, window_s: float, hop_s: float,
             held_out: list[str] | None = None) -> dict[str, Any]:
    cfg = Config()
    _, calibration_voices, strangers = voice_split(held_out)
    speakers = sorted(p for p in ENROLLED.iterdir() if p.is_dir())
    started = time.perf_counter()
    enrolled, one_pass_prints, tests = {}, {}, []  # tests: (speaker, path)
    for speaker in speakers:
        files = sorted(speaker.glob("*.flac"))
        sample = enroll.gather([load_audio(p, rate) for p in files[:ENROLL_FILES]], rate, cfg.vad)
        enrolled[speaker.name] = enroll.embed(engine, sample)
        one_pass_prints[speaker.name] = embed_utterance(engine, sample.voiced)
        tests += [(speaker.name, f) for f in files[ENROLL_FILES:]]
    names = tuple(sorted(enrolled))
    prints = np.stack([mean_embedding(enrolled[n]) for n in names])
    calibration_files = [f for v in calibration_voices for f in sorted(v.glob("*.flac"))]
    calibration = [windows_of(engine, sorted(v.glob("*.flac")), rate, cfg) for v in calibration_voices]
    stranger_files = [sorted(v.glob("*.flac"))[0] for v in strangers]
    every_stranger_file = [f for v in strangers for f in sorted(v.glob("*.flac"))]

    # 1. utterances: a test's window mean or one pass, against window-mean or one-pass voiceprints
    voiced = {p: voiced_of(p, rate, cfg) for p in [p for _, p in tests] + every_stranger_file + calibration_files}
    test_paths = [p for _, p in tests] + stranger_files
    truth = [names.index(s) for s, _ in tests] + [-1] * len(stranger_files)
    window_mean = np.stack([mean_embedding(windows_of(engine, [p], rate, cfg)) for p in test_paths])
    one_pass = np.stack([embed_utterance(engine, voiced[p]) for p in test_paths])
    one_pass_print_rows = np.stack([one_pass_prints[n] for n in names])
    cohort = normalize(np.concatenate(calibration))
    raw = cosine_scores(window_mean, prints)
    normed = as_norm(raw, prints @ cohort.T, normalize(window_mean) @ cohort.T, COHORT_TOP_K)
    mask = np.zeros_like(raw, dtype=bool)
    for row, column in enumerate(truth):
        if column >= 0:
            mask[row, column] = True
    v = verification(normed[mask], normed[~mask])
    utterance = {"raw": eer_of(window_mean, prints, truth),
                 "as_norm": {"eer": round(v.eer, 4), "min_dcf": round(v.min_dcf, 4)},
                 "one_pass": eer_of(one_pass, prints, truth),
                 "one_pass_vs_one_pass_prints": eer_of(one_pass, one_pass_print_rows, truth),
                 "window_mean_vs_one_pass_prints": eer_of(window_mean, one_pass_print_rows, truth)}

    # 2. calibrate as `spkrec calibrate` does: windows, then whole files (and verify's FAR on held-out trials)
    guard = int(np.ceil(window_s / hop_s))
    cal = calibrate_open_set(enrolled, calibration, cfg.calibrate.target_far, cfg.stream.smoothing,
                             cfg.calibrate.holdout, guard)
    impostor_files = np.stack([embed_utterance(engine, voiced[p]) for p in calibration_files])
    files_cal = calibrate_utterances(cosine_scores(impostor_files, prints), cfg.calibrate.target_far)
    held_strangers = cosine_scores(np.stack([embed_utterance(engine, voiced[p]) for p in every_stranger_file]), prints)
    own = one_pass[: len(tests)]
    own_scores = cosine_scores(own, prints)
    own_truth = np.array(truth[: len(tests)])
    others = np.concatenate([np.delete(row, t) for row, t in zip(own_scores, own_truth)])  # tests vs other voices
    nontargets = np.concatenate([held_strangers.ravel(), others])
    frr, far = rates_at(own_scores[np.arange(len(tests)), own_truth], nontargets, files_cal.threshold)
    # the same procedure with calibration impostors the model never heard (as at a real site): the
    # stranger voices in two halves, calibrated on one, measured on the other and the tests, then swapped
    unseen = []
    for fold in (0, 1):
        mine = [i for i, f in enumerate(every_stranger_file) if strangers.index(f.parent) % 2 == fold]
        rest = [i for i in range(len(every_stranger_file)) if i not in mine]
        point = calibrate_utterances(held_strangers[mine], cfg.calibrate.target_far).threshold
        unseen.append(rates_at([], np.concatenate([held_strangers[rest].ravel(), others]), point)[1])
    verify = {"threshold": round(files_cal.threshold, 4),
              "held_out_far_unseen_calibration": round(float(np.mean(unseen)), 4), "target_far": files_cal.target_far,
              "calibration_trials": files_cal.n_nontarget, "held_out_far": round(far, 4),
              "held_out_nontargets": int(nontargets.size), "held_out_frr": round(frr, 4), "targets": len(tests)}

    # 3. the door: its threshold from the calibration impostors replayed as visits, then the trials
    cfg.door.authorized = list(names)
    roster = lambda: (names, prints)  # noqa: E731  (the gallery's voiceprints, as the daemon's roster gives them)
    criticals = [critical(attempt, cfg.door, cfg.decision.margin) for path in calibration_files
                 for attempt in visits(engine, path, roster, cfg.door, cfg)]
    door_cal = calibrate_door(criticals, cfg.calibrate.target_visit_far, rule_of(cfg.door, cfg.decision.margin))
    door = door_trials(engine, tests, stranger_files, roster, door_cal.threshold, cfg)
    return {
        "utterance": utterance,
        "calibration": {"threshold": round(cal.threshold, 4), "eer": round(cal.eer, 4), "far": round(cal.far, 4),
                        "frr": round(cal.frr, 4), "targets": cal.n_target, "nontargets": cal.n_nontarget},
        "verify": verify,
        "door_calibration": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in door_cal.__dict__.items()},
        "door": door,
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(results: dict[str, Any]) -> str:
    rows = ["| system | EER, window mean | EER, one pass | EER, one pass vs one-pass prints | EER AS-norm (window mean) "
            "| verify FAR held out (target) | verify FRR | door thr. | door FRR | door FAR (strangers) | wrong-name grants |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["systems"].items():
        u, d, f = r["utterance"], r["door"], r["verify"]
        rows.append(f"| {name} | {u['raw']['eer']:.1%} | {u['one_pass']['eer']:.1%} | "
                    f"{u['one_pass_vs_one_pass_prints']['eer']:.1%} | {u['as_norm']['eer']:.1%} | "
                    f"{f['held_out_far']:.2%} of {f['held_out_nontargets']} ({f['target_far']:.0%}) | "
                    f"{f['held_out_frr']:.1%} | {d['threshold']:.3f} | {d['frr']:.1%} ({d['attempts']}) | "
                    f"{d['far']:.1%} ({d['stranger_attempts']}) | {d['wrong_name_grants']} |")
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
    results["systems"] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, system in systems.items():  # each system's results are written as soon as they are in
        results["systems"][name] = evaluate(system, info.sample_rate, info.window_s, info.hop_s, held_out)
        args.out.write_text(json.dumps(results, indent=1))
    print(results["protocol"])
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
