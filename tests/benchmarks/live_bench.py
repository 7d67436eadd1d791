"""Benchmark: the live daemon on this CPU, in one run.

It measures five things on real speech (the held-out demo voices, tiled to length):

1. ONNX Runtime, CPU provider, batch 1: ms per 2-second window through ``Engine.embed``;
2. end-to-end latency of the real pipeline replaying a file in real time
   (``SpeakerEvent.latency_ms``: arrival of the block that completes a window -> its event);
3. real-time factor of the same pipeline replaying N minutes as fast as it can;
4. resident memory (VmRSS) sampled every ~30 s of stream time during that fast run;
5. the same model in PyTorch eager, batch 1, on the same windows and thread count (needs the
   training run's model.pt; skipped with a note when only an .onnx is given).

The pipeline runs come first and torch is imported last, so the RSS figures are those of the
daemon's own process (which never imports torch). Results: a Markdown table on stdout and
``--out`` JSON. Not a pytest test: run it by hand on an otherwise idle machine.

    .venv/bin/python tests/benchmarks/live_bench.py [--minutes 10] [--realtime-seconds 60] \
        [--model MODEL.onnx (default: the shipped base model)] [--out tests/benchmarks/results/live_cpu.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf

from spkrec.daemon.pipeline.decisions import Decider, DeciderSettings
from spkrec.daemon.pipeline.events import Event, SpeakerEvent
from spkrec.daemon.pipeline.run import Pipeline, Stream
from spkrec.daemon.pipeline.sources import FileSource, demo_conversation
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.pipeline.vad import Vad
from spkrec.daemon.pipeline.windowing import Windower
from spkrec.models.base import base_model_path
from spkrec.models.config import Config
from spkrec.daemon.commands.democorpus import build_corpus
from spkrec.models.thresholds import resolve  # noqa: E402
from spkrec.models.engine import Engine

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


def rss_mb() -> float:
    """Resident set size of this process, from the kernel (what `top` calls RES)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def percentiles(values: list[float]) -> dict[str, Any]:
    """p50/p95 in ms, plus n so a reader can tell a thin sample from a solid one."""
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2),
            "n": len(values)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on; torch's version is read without importing it."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
            "torch": _version("torch")}


def _version(*names: str) -> str | None:
    """The installed version of the first of these distributions present (onnxruntime-gpu
    installs the same package as onnxruntime under another name)."""
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}" if len(names) > 1 else importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def conversation(seconds: float, rate: int, cache_dir: Path) -> np.ndarray:
    """Real turn-taking speech with pauses (the demo's held-out voices), tiled to ``seconds``."""
    manifest = cache_dir / "demo" / "heldout.csv"
    if not manifest.is_file():
        manifest = build_corpus(cache_dir)["heldout"]
    audio, _ = demo_conversation(manifest, rate)
    return np.resize(audio, int(seconds * rate)).astype(np.float32)


def write_wav(folder: Path, name: str, audio: np.ndarray, rate: int) -> Path:
    """FileSource reads a file, so the benchmark audio goes through one (float WAV: no re-quantising)."""
    path = folder / name
    sf.write(str(path), audio, rate, subtype="FLOAT")
    return path


# ---------------------------------------------------------------- sinks


class LatencySink:
    """Keeps the daemon's own per-window latency and inference figures."""

    def __init__(self) -> None:
        self.latency_ms: list[float] = []
        self.inference_ms: list[float] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, SpeakerEvent):
            self.latency_ms.append(event.latency_ms)
            self.inference_ms.append(event.inference_ms)

    def close(self) -> None:
        pass


class RssSink:
    """Samples RSS each time stream time crosses another ``every_s``: memory against audio
    processed, independent of how fast the machine runs."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next_s = every_s
        self.samples: list[tuple[float, float]] = []  # (stream seconds, MB)

    def handle(self, event: Event) -> None:
        if isinstance(event, SpeakerEvent) and event.end >= self.next_s:
            self.samples.append((round(event.end, 1), round(rss_mb(), 1)))
            self.next_s = (event.end // self.every_s + 1) * self.every_s

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- measurements


def make_stream(engine: Engine, cfg: Config, wav: Path, realtime: bool, name: str = "") -> Stream:
    """One input exactly as `spkrec live --input FILE` builds it."""
    info = engine.info
    window_s, hop_s = cfg.stream.window_s or info.window_s, cfg.stream.hop_s or info.hop_s
    source = FileSource(wav, info.sample_rate, cfg.audio.block_s, realtime=realtime)
    settings = DeciderSettings(resolve(cfg.decision, info.thresholds).threshold, cfg.decision.margin, cfg.stream.smoothing,
                               cfg.vad.min_voiced_ratio)
    return Stream(source, Vad(info.sample_rate, cfg.vad.frame_ms, cfg.vad.aggressiveness),
                  Windower(info.sample_rate, window_s, hop_s), Decider(lambda: (info.labels, info.prototypes), settings),
                  LiveState(source=source.name, rate=info.sample_rate, provider=engine.provider, hop_s=hop_s,
                            timeline_s=cfg.ui.timeline_s, name=name), name=name)


def run_pipeline(engine: Engine, cfg: Config, wav: Path, realtime: bool, sinks: list,
                 before_run: Callable[[], None] = lambda: None) -> float:
    """The daemon's pipeline over one file; returns wall seconds."""
    pipeline = Pipeline([make_stream(engine, cfg, wav, realtime)], engine, sinks, cfg.stream.batch_wait_s)
    before_run()
    start = time.perf_counter()
    pipeline.run(threading.Event())
    return time.perf_counter() - start


def time_calls(call: Callable[[np.ndarray], Any], windows: np.ndarray, warmup: int) -> list[float]:
    """ms per call at batch 1; the first ``warmup`` calls are dropped (lazy allocation, caches)."""
    for window in windows[:warmup]:
        call(window[None, :])
    times = []
    for window in windows:
        start = time.perf_counter()
        call(window[None, :])
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def find_run_dir(model: Path, explicit: Path | None) -> Path | None:
    """The training run whose model.pt this .onnx was exported from, when we can tell."""
    if explicit is not None:
        return explicit
    if (model.parent / "model.pt").is_file():  # a run directory's own model.onnx
        return model.parent
    return None


def load_torch_net(run_dir: Path, threads: int) -> Any:
    """model.pt as `spkrec export` loads it, in eval mode."""
    import torch

    from spkrec.training.reexport import load_run

    torch.set_num_threads(threads)
    return load_run(run_dir)[0]


def torch_embedder(net: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(batch)))[0].numpy()

    return embed


# ---------------------------------------------------------------- report


def table(r: dict[str, Any]) -> str:
    def ms(d: dict[str, Any]) -> str:
        return "-" if d.get("p50") is None else f"p50 {d['p50']:.1f} / p95 {d['p95']:.1f} ms (n={d['n']})"

    fast, rss = r["fast_run"], r["fast_run"]["rss_mb"]
    eager = r["torch_eager_cpu_b1_ms"]
    rows = [
        ("inference, ONNX Runtime CPU, batch 1", ms(r["onnx_cpu_b1_ms"])),
        ("inference, PyTorch eager CPU, batch 1", ms(eager) if "skipped" not in eager else f"skipped: {eager['skipped']}"),
        (f"end-to-end latency, real time ({r['realtime_run']['audio_s']:.0f} s audio)", ms(r["realtime_run"]["latency_ms"])),
        (f"real-time factor ({fast['audio_s'] / 60:.1f} min audio, fast replay)",
         f"{fast['rtf']:.3f} ({fast['x_realtime']:.1f}x real time)"),
        ("RSS start / end / max", f"{rss['start']:.0f} / {rss['end']:.0f} / {rss['max']:.0f} MB "
                                  f"({len(rss['samples'])} samples)"),
    ]
    lines = ["| measurement | result |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main() -> None:
    cfg = Config()  # packaged defaults (= the repo's config.toml), so runs are comparable anywhere
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=base_model_path())
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="training run holding model.pt (default: found from --model when possible)")
    parser.add_argument("--minutes", type=float, default=10.0, help="audio for the fast (RTF, RSS) run")
    parser.add_argument("--realtime-seconds", type=float, default=60.0, help="audio for the real-time latency run")
    parser.add_argument("--windows", type=int, default=200, help="2-second windows for the per-window timings")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime and torch threads (0: os.cpu_count())")
    parser.add_argument("--rss-every", type=float, default=30.0, help="stream seconds between RSS samples")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "benchmarks" / "results" / "live_cpu.json")
    args = parser.parse_args()
    model = args.model.expanduser()
    threads = args.threads or os.cpu_count() or 1

    engine = Engine(model, provider="cpu", threads=threads)
    engine.warm_up()
    info = engine.info
    rate = info.sample_rate
    audio = conversation(max(args.minutes * 60, args.realtime_seconds, args.windows * info.hop_s + info.window_s),
                         rate, cfg.cache_dir())
    hop = int(info.hop_s * rate)
    windows = np.stack([audio[i * hop : i * hop + info.window_samples] for i in range(args.windows)])
    result: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv]),
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "load_average_at_start": os.getloadavg(),
        "model": str(model), "threads": threads, "provider": engine.provider,
        "window_s": info.window_s, "hop_s": info.hop_s, "block_s": cfg.audio.block_s,
    }

    with tempfile.TemporaryDirectory(prefix="spkrec-live-bench-") as tmp:
        print(f"real-time run: {args.realtime_seconds:.0f} s of audio ...", file=sys.stderr)
        latency = LatencySink()
        wav = write_wav(Path(tmp), "realtime.wav", audio[: int(args.realtime_seconds * rate)], rate)
        wall = run_pipeline(engine, cfg, wav, realtime=True, sinks=[latency])
        result["realtime_run"] = {"audio_s": args.realtime_seconds, "wall_s": round(wall, 2),
                                  "latency_ms": percentiles(latency.latency_ms),
                                  "pipeline_inference_ms": percentiles(latency.inference_ms)}

        print(f"fast run: {args.minutes:g} min of audio ...", file=sys.stderr)
        fast_s = args.minutes * 60
        wav = write_wav(Path(tmp), "fast.wav", audio[: int(fast_s * rate)], rate)
        rss, fast = RssSink(args.rss_every), LatencySink()
        start_rss: list[float] = []
        wall = run_pipeline(engine, cfg, wav, realtime=False, sinks=[rss, fast],
                            before_run=lambda: start_rss.append(rss_mb()))  # audio already loaded
        end_rss = rss_mb()
        values = start_rss + [mb for _, mb in rss.samples] + [end_rss]
        result["fast_run"] = {
            "audio_s": fast_s, "wall_s": round(wall, 2), "rtf": round(wall / fast_s, 4),
            "x_realtime": round(fast_s / wall, 2), "scored_windows": len(fast.inference_ms),
            "pipeline_inference_ms": percentiles(fast.inference_ms),
            "rss_mb": {"start": round(start_rss[0], 1), "end": round(end_rss, 1), "max": round(max(values), 1),
                       "samples": rss.samples},
        }

    print(f"per-window timings: {args.windows} windows ...", file=sys.stderr)
    onnx_ms = time_calls(engine.embed, windows, args.warmup)
    result["onnx_cpu_b1_ms"] = percentiles(onnx_ms)
    run_dir = find_run_dir(model, args.run_dir)
    if run_dir is None or not (run_dir / "model.pt").is_file():
        where = run_dir / "model.pt" if run_dir else "no training run found for this .onnx (use --run-dir)"
        result["torch_eager_cpu_b1_ms"] = {"skipped": f"model.pt not available: {where}"}
    else:
        net = load_torch_net(run_dir, threads)
        embed = torch_embedder(net)
        eager = percentiles(time_calls(embed, windows, args.warmup))
        eager["model_pt"] = str(run_dir / "model.pt")
        eager["torch_threads"] = threads
        # Same model? The eager and ONNX embeddings of a few windows should agree closely.
        eager["max_abs_diff_vs_onnx"] = float(np.max(np.abs(embed(windows[:4]) - engine.embed(windows[:4]))))
        result["torch_eager_cpu_b1_ms"] = eager
    result["load_average_at_end"] = os.getloadavg()

    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, torch {m['torch']}; "
          f"{threads} threads; load average at start {result['load_average_at_start'][0]:.2f}\n")
    print(table(result))
    note = result["torch_eager_cpu_b1_ms"].get("note")
    if note:
        print(f"\nnote: {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
