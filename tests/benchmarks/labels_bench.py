"""Benchmark: live labels, window by window against the turn's accumulated audio, in one run.

The shipped base model (or ``--model``), the daemon's own pipeline (file source, VAD, windows,
decider) on a conversation nobody trained on: four LibriSpeech test-other voices enrolled from
their first 6 recordings (as `spkrec enroll` makes voiceprints), two more as strangers, their
remaining recordings taking turns in a seeded random order with pauses of 0.2-0.6 s (shorter
than a window, so the change of speaker, not a pause, must start each turn). The thresholds are
calibrated as `spkrec calibrate` does (calibration impostors: every 10th train-clean-100 voice):
the window point for window labels, the whole-file point for the turn's one-pass labels.

Two deciders, the same audio:
- ``window``: each window's smoothed label (daemon/pipeline/decisions.py ``Decider``);
- ``turn``: windows detect the change, the turn's voiced audio (its last 8 s, re-embedded every
  second of new voice) names it (``TurnDecider``).

Measured: label accuracy over windows lying wholly inside one turn (a stranger's right label is
"unknown"), enrolled and stranger windows apart; change latency: for each turn after the first,
stream seconds from the turn's start to the end of the first window that carries its right
label, p50/p95, and the turns whose label never came.

    .venv/bin/python tests/benchmarks/labels_bench.py [--model M.onnx] [--out tests/benchmarks/results/labels.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import machine, percentiles  # noqa: E402
from verification_bench import MANY, voice_split, windows_of  # noqa: E402

from spkrec.daemon.commands import enroll  # noqa: E402
from spkrec.daemon.pipeline.decisions import Decider, DeciderSettings, TurnDecider  # noqa: E402
from spkrec.daemon.pipeline.events import Event, SpeakerEvent  # noqa: E402
from spkrec.daemon.pipeline.run import Pipeline, Stream  # noqa: E402
from spkrec.daemon.pipeline.sources import FileSource  # noqa: E402
from spkrec.daemon.pipeline.state import LiveState  # noqa: E402
from spkrec.daemon.pipeline.vad import Vad  # noqa: E402
from spkrec.daemon.pipeline.windowing import Windower  # noqa: E402
from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.base import base_model_path  # noqa: E402
from spkrec.models.calibration import calibrate_open_set, calibrate_utterances  # noqa: E402
from spkrec.models.config import Config  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.models.scoring import UNKNOWN, cosine_scores, mean_embedding  # noqa: E402
from spkrec.models.utterance import embed_once, embed_utterance  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEST_OTHER = MANY.parent / "librispeech-test-other"
ENROLLED, STRANGERS, ENROLL_FILES = ("1688", "2033", "3005", "367"), ("2414", "3331"), 6


class Keep:
    def __init__(self) -> None:
        self.events: list[SpeakerEvent] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, SpeakerEvent):
            self.events.append(event)

    def close(self) -> None:
        pass


def files_of(voice: str) -> list[Path]:
    return sorted((TEST_OTHER / voice).glob("*.flac"))


def meeting(out: Path, seed: int) -> list[tuple[float, float, str]]:
    """The held-out recordings of every voice taking turns, short pauses between them."""
    rng = np.random.default_rng(seed)
    order = [(p, v if v in ENROLLED else UNKNOWN) for v in ENROLLED + STRANGERS for p in files_of(v)[ENROLL_FILES:]]
    order = [order[i] for i in rng.permutation(len(order))]
    gaps = rng.uniform(0.2, 0.6, len(order))
    parts, turns, cursor, rate = [], [], 0, 16000
    for (path, label), gap in zip(order, gaps):
        speech = load_audio(path, rate)
        turns.append((cursor / rate, (cursor + speech.size) / rate, label))
        parts += [speech, np.zeros(int(gap * rate), np.float32)]
        cursor += speech.size + int(gap * rate)
    sf.write(out, np.concatenate(parts), rate, subtype="FLOAT")
    return turns


def run(engine: Engine, wav: Path, decider: Decider, cfg: Config) -> list[SpeakerEvent]:
    info = engine.info
    source = FileSource(wav, info.sample_rate, cfg.audio.block_s, realtime=False)
    keep = Keep()
    stream = Stream(source, Vad(info.sample_rate, cfg.vad.frame_ms, cfg.vad.aggressiveness),
                    Windower(info.sample_rate, info.window_s, info.hop_s), decider,
                    LiveState(source=source.name, rate=info.sample_rate, provider=engine.provider, hop_s=info.hop_s,
                              timeline_s=60), sinks=[keep])
    Pipeline([stream], engine).run(threading.Event())
    return keep.events


def score(events: list[SpeakerEvent], turns, slack: float = 0.25) -> dict[str, Any]:
    inside = {"enrolled": [0, 0], "stranger": [0, 0]}
    for e in events:
        turn = next((t for t in turns if t[0] - slack <= e.start and e.end <= t[1] + slack), None)
        if turn is not None:
            kind = "stranger" if turn[2] == UNKNOWN else "enrolled"
            inside[kind][0] += e.label == turn[2]
            inside[kind][1] += 1
    delays, missed = [], 0
    for start, end, label in turns[1:]:
        right = next((e.end for e in events if start < e.end <= end + 2.0 and e.label == label), None)
        if right is None:
            missed += 1
        else:
            delays.append((right - start) * 1000.0)
    total = [inside["enrolled"][i] + inside["stranger"][i] for i in (0, 1)]
    return {"accuracy": round(total[0] / max(total[1], 1), 4), "windows": total[1],
            "enrolled_accuracy": round(inside["enrolled"][0] / max(inside["enrolled"][1], 1), 4),
            "stranger_accuracy": round(inside["stranger"][0] / max(inside["stranger"][1], 1), 4),
            "change_latency_ms": percentiles(delays), "changes": len(turns) - 1, "never_right": missed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=base_model_path())
    parser.add_argument("--seeds", type=int, default=3, help="conversations (each a different turn order)")
    parser.add_argument("--change-windows", type=int, default=1, help="TurnDecider: windows that disagree before a new turn")
    parser.add_argument("--out", type=Path, default=REPO / "tests/benchmarks/results/labels.json")
    args = parser.parse_args()
    engine, cfg = Engine(args.model, "cpu"), Config()
    info, rate = engine.info, engine.info.sample_rate
    names, windows, prints = ENROLLED, {}, []
    for name in names:
        sample = enroll.gather([load_audio(p, rate) for p in files_of(name)[:ENROLL_FILES]], rate, cfg.vad)
        windows[name] = enroll.embed(engine, sample)
        prints.append(mean_embedding(windows[name]))
    prints = np.stack(prints)
    _, calibration_voices, _ = voice_split([])
    impostor_files = [f for v in calibration_voices for f in sorted(v.glob("*.flac"))]
    impostors = [windows_of(engine, [f], rate, cfg) for f in impostor_files]
    guard = int(np.ceil(info.window_s / info.hop_s))
    window_point = calibrate_open_set(windows, impostors, cfg.calibrate.target_far, cfg.stream.smoothing,
                                      cfg.calibrate.holdout, guard).threshold
    one_pass = np.stack([embed_utterance(engine, enroll.gather([load_audio(f, rate)], rate, cfg.vad).voiced)
                         for f in impostor_files])
    turn_point = calibrate_utterances(cosine_scores(one_pass, prints), cfg.calibrate.target_far).threshold
    settings = DeciderSettings(window_point, cfg.decision.margin, cfg.stream.smoothing, cfg.vad.min_voiced_ratio)
    roster = lambda: (names, prints)  # noqa: E731
    results: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]), "machine": machine(),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "model": str(args.model),
                               "enrolled": list(ENROLLED), "strangers": list(STRANGERS),
                               "change_windows": args.change_windows, "window_threshold": round(window_point, 4), "turn_threshold": round(turn_point, 4),
                               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            wav = Path(tmp) / f"meeting{seed}.wav"
            turns = meeting(wav, seed)
            row = {"seed": seed, "turns": len(turns), "audio_s": round(turns[-1][1], 1)}
            for kind in ("window", "turn"):
                decider = Decider(roster, settings) if kind == "window" else TurnDecider(
                    roster, settings, None, lambda audio: embed_once(engine, audio), lambda: turn_point, rate,
                    info.hop_s, change_windows=args.change_windows)
                started = time.perf_counter()
                row[kind] = {**score(run(engine, wav, decider, cfg), turns),
                             "wall_s": round(time.perf_counter() - started, 1)}
            results["runs"].append(row)
            print(json.dumps(row))
    for kind in ("window", "turn"):
        rows = [r[kind] for r in results["runs"]]
        results[kind] = {key: round(float(np.mean([r[key] for r in rows])), 4)
                         for key in ("accuracy", "enrolled_accuracy", "stranger_accuracy", "never_right")}
        results[kind]["change_latency_p50_ms"] = round(float(np.median([r["change_latency_ms"]["p50"] for r in rows])), 1)
        results[kind]["change_latency_p95_ms"] = round(float(np.median([r["change_latency_ms"]["p95"] for r in rows])), 1)
    print("| labels | accuracy | enrolled | strangers | change latency p50 / p95 | changes never right |")
    print("|---|---|---|---|---|---|")
    for kind in ("window", "turn"):
        r = results[kind]
        print(f"| {kind} | {r['accuracy']:.1%} | {r['enrolled_accuracy']:.1%} | {r['stranger_accuracy']:.1%} | "
              f"{r['change_latency_p50_ms']:.0f} / {r['change_latency_p95_ms']:.0f} ms | {r['never_right']:.1f} |")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
