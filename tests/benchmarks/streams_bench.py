"""Benchmark: 1, 2 and 4 simultaneous inputs through one daemon process, on this CPU.

Each input is a different real voice (LibriSpeech test-other utterances with short pauses,
tiled to length) read by the daemon's own FileSource, through the real multi-input pipeline
(per-input VAD, windows, decisions; windows due at the same hop batched into one engine call):

1. real-time factor: all inputs replayed as fast as they can go; wall time / audio seconds of
   one input (they run side by side), and the engine's batch sizes;
2. latency per input: the same inputs replayed in real time; ``SpeakerEvent.latency_ms``
   (arrival of the block that completes a window -> its event, batch wait included), p50/p95.

    .venv/bin/python tests/benchmarks/streams_bench.py [--model PATH] [--seconds 60] \\
        [--realtime-seconds 30] [--out tests/benchmarks/results/streams_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import machine, make_stream, percentiles, write_wav  # noqa: E402

from spkrec.daemon.pipeline.events import Event, SpeakerEvent  # noqa: E402
from spkrec.daemon.pipeline.run import Pipeline  # noqa: E402
from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.base import base_model_path  # noqa: E402
from spkrec.models.config import Config  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VOICES = REPO.parent / "shared" / "data" / "librispeech-test-other"


class Latencies:
    """A sink: latency of every scored window, per stream."""

    def __init__(self) -> None:
        self.by_stream: dict[str, list[float]] = {}

    def handle(self, event: Event) -> None:
        if isinstance(event, SpeakerEvent):
            self.by_stream.setdefault(event.stream, []).append(event.latency_ms)

    def close(self) -> None:
        pass


def voice(speaker: Path, seconds: float, rate: int) -> np.ndarray:
    """One speaker's utterances with 0.5 s pauses between them, tiled to ``seconds``."""
    pause = np.zeros(rate // 2, np.float32)
    parts = [p for f in sorted(speaker.glob("*.flac")) for p in (load_audio(f, rate), pause)]
    return np.resize(np.concatenate(parts), int(seconds * rate)).astype(np.float32)


def run(engine: Engine, cfg: Config, wavs: list[Path], realtime: bool) -> tuple[float, Pipeline, Latencies]:
    streams = [make_stream(engine, cfg, wav, realtime, name=wav.stem) for wav in wavs]
    latencies = Latencies()
    pipeline = Pipeline(streams, engine, [latencies], cfg.stream.batch_wait_s)
    engine.warm_up_batches(len(wavs))
    start = time.perf_counter()
    pipeline.run(threading.Event())
    return time.perf_counter() - start, pipeline, latencies


def mean_batch(pipeline: Pipeline) -> float:
    sizes = pipeline.batch_sizes
    return round(sum(k * n for k, n in sizes.items()) / max(1, sum(sizes.values())), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=base_model_path())
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per input for the real-time factor")
    parser.add_argument("--realtime-seconds", type=float, default=30.0, help="audio per input for latency")
    parser.add_argument("--counts", default="1,2,4")
    parser.add_argument("--out", type=Path, default=REPO / "tests/benchmarks/results/streams_cpu.json")
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"no model at {args.model}: run `spkrec default-model` or pass --model")
    engine = Engine(args.model, provider="cpu")
    cfg = Config()
    cfg.decision.operating_point = "eer"
    rate = engine.info.sample_rate
    speakers = sorted(p for p in VOICES.iterdir() if p.is_dir())
    counts = [int(c) for c in args.counts.split(",")]
    result: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "model": str(args.model),
                              "batch_wait_s": cfg.stream.batch_wait_s, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        long = [write_wav(folder, f"in{i}-{s.name}.wav", voice(s, args.seconds, rate), rate)
                for i, s in enumerate(speakers[: max(counts)])]
        short = [write_wav(folder, f"rt{i}-{s.name}.wav", voice(s, args.realtime_seconds, rate), rate)
                 for i, s in enumerate(speakers[: max(counts)])]
        for n in counts:
            wall, pipeline, _ = run(engine, cfg, long[:n], realtime=False)
            _, live, latencies = run(engine, cfg, short[:n], realtime=True)
            row = {"inputs": n, "rtf": round(wall / args.seconds, 4),
                   "audio_s_per_wall_s": round(n * args.seconds / wall, 1),
                   "mean_batch": mean_batch(pipeline),
                   "latency_ms": {name: percentiles(values) for name, values in sorted(latencies.by_stream.items())},
                   "realtime_mean_batch": mean_batch(live),
                   "dropped_blocks": sum(s.state.dropped for s in live.streams)}
            result["rows"].append(row)
            print(f"{n} inputs: RTF {row['rtf']}, {row['audio_s_per_wall_s']} audio s per s, batch "
                  f"{row['mean_batch']} (fast) / {row['realtime_mean_batch']} (real time), latency p50 "
                  + ", ".join(f"{k} {v['p50']}" for k, v in row["latency_ms"].items()), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| inputs | RTF (wall / audio of one input) | mean batch | latency p50 / p95 ms, per input |")
    print("|---|---|---|---|")
    for row in result["rows"]:
        per = "; ".join(f"{v['p50']:.0f} / {v['p95']:.0f}" for v in row["latency_ms"].values())
        print(f"| {row['inputs']} | {row['rtf']:.3f} | {row['realtime_mean_batch']} | {per} |")


if __name__ == "__main__":
    main()
