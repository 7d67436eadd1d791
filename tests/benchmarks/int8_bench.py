"""fp32 against static and dynamic int8 on the CPU, side by side in one run.

Static int8 is ONNX Runtime's QDQ quantisation with per-channel weights and activation ranges
calibrated on real speech windows of the model's own training audio (LibriSpeech
train-clean-100 for the base model); the DFT/mel front end stays float. Dynamic int8 is what
`spkrec export --int8` made so far. For each: ms per window at batch 1 and 4 (p50/p95, each in
a fresh process, with its RSS), file size, cosine to the fp32 embeddings, and open-set
identification on voices no model heard (LibriSpeech test-other: voiceprints from each voice's
first 6 files, the rest identified; EER over file/voiceprint pairs).

    .venv/bin/python tests/benchmarks/int8_bench.py --out tests/benchmarks/results/int8_base.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))

from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.base import base_model_path  # noqa: E402
from spkrec.models.calibration import verification  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.models.scoring import normalize  # noqa: E402
from spkrec.models.windows import frame_windows  # noqa: E402

ENROLL_FILES = 6


def voices(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.rglob("*.flac")) for d in sorted(root.iterdir()) if d.is_dir()}


def file_windows(path: Path, rate: int, window: int, hop: int) -> np.ndarray:
    return frame_windows(load_audio(path, rate), window, hop)


def calibration_windows(rate: int, window: int, n_voices: int, per_voice: int) -> np.ndarray:
    """Windows of the base model's training audio, a few per voice from many voices."""
    found = voices(SHARED / "librispeech-train-clean-100")
    picked = []
    for name in list(found)[:n_voices]:
        for path in found[name][:2]:
            picked.extend(file_windows(path, rate, window, window)[: per_voice // 2])
    return np.stack(picked).astype(np.float32)


def timing_child(model: str, batch: int, repeats: int) -> None:
    """In a fresh process: ms per window at ``batch`` and the process's RSS."""
    engine = Engine(model, provider="cpu")
    rng = np.random.default_rng(0)
    windows = (rng.standard_normal((batch, int(engine.info.window_s * engine.info.sample_rate))) * 0.05).astype(np.float32)
    for _ in range(3):
        engine.embed(windows)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.embed(windows)
        times.append((time.perf_counter() - start) * 1000.0 / batch)
    status = Path("/proc/self/status").read_text()
    rss = {k: int(line.split()[1]) / 1024 for line in status.splitlines() for k in ("VmRSS", "VmHWM")
           if line.startswith(k + ":")}
    print(json.dumps({"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
                      "rss_mb": rss["VmRSS"], "peak_rss_mb": rss["VmHWM"]}))


def timed(model: Path, batch: int, repeats: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(model), "--batch", str(batch), "--repeats",
                           str(repeats)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def open_set(engine: Engine, files: dict[str, list[Path]], cache: dict) -> tuple[dict, np.ndarray]:
    """Voiceprints from the first files, the rest identified; window embeddings for cosines."""
    info = engine.info
    window, hop = int(info.window_s * info.sample_rate), int(info.hop_s * info.sample_rate)
    prints, tests, all_windows = {}, [], []
    for name, paths in files.items():
        embedded = []
        for path in paths:
            if path not in cache:
                cache[path] = file_windows(path, info.sample_rate, window, hop)
            emb = engine.embed_windows(cache[path], batch_size=8)
            all_windows.append(emb)
            embedded.append(normalize(emb.mean(axis=0, keepdims=True))[0])
        prints[name] = normalize(np.mean(embedded[:ENROLL_FILES], axis=0, keepdims=True))[0]
        tests += [(name, e) for e in embedded[ENROLL_FILES:]]
    names = list(prints)
    matrix = np.stack([prints[n] for n in names])
    scores = np.stack([matrix @ e for _, e in tests])
    truth = np.array([names.index(n) for n, _ in tests])
    accuracy = float((scores.argmax(axis=1) == truth).mean())
    mask = np.zeros_like(scores, bool)
    mask[np.arange(len(truth)), truth] = True
    result = verification(scores[mask], scores[~mask])
    return {"file_accuracy": accuracy, "eer": float(result.eer), "files": len(tests), "voices": len(names)}, \
        np.concatenate(all_windows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=base_model_path())
    parser.add_argument("--out", type=Path)
    parser.add_argument("--calibration-voices", type=int, default=60)
    parser.add_argument("--per-voice", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--recalibrate", action="store_true", help="measure ranges here even if the model has some")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        timing_child(args.child, args.batch, args.repeats)
        return

    from spkrec.models.quantize import quantize_static_int8
    from spkrec.training.export import quantize_int8
    from spkrec.training.int8 import measure_ranges

    engine = Engine(args.model, provider="cpu")
    info = engine.info
    window = int(info.window_s * info.sample_rate)
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    start = time.perf_counter()
    if info.int8_ranges and not args.recalibrate:  # what the daemon builds from: the ranges the model ships
        ranges, calibration = info.int8_ranges, {"source": "the model's own int8_ranges", **info.training.get(
            "int8_calibration", {})}
    else:
        calib = calibration_windows(info.sample_rate, window, args.calibration_voices, args.per_voice)
        ranges = measure_ranges(args.model, calib)
        calibration = {"source": "measured here", "windows": len(calib), "voices": args.calibration_voices,
                       "corpus": "train-clean-100"}
    calibration["seconds"] = time.perf_counter() - start
    static = work / "static.onnx"
    start = time.perf_counter()
    quantize_static_int8(args.model, static, ranges)
    calibration["quantize_seconds"] = time.perf_counter() - start
    import onnx

    from spkrec.models.quantize import float_initializers

    unfolded = onnx.load(str(args.model))
    float_initializers(unfolded)  # fp16-stored weights as float initializers, which quantize_dynamic needs
    onnx.save(unfolded, str(work / "float.onnx"))
    dynamic = work / "dynamic.onnx"
    quantize_int8(work / "float.onnx", dynamic, info)
    models = {"fp32": args.model, "int8 static": static, "int8 dynamic": dynamic}

    files = voices(SHARED / "librispeech-test-other")
    cache: dict = {}
    results, reference = {}, None
    for name, path in models.items():
        print(f"{name}: open set ...", flush=True)
        quality, emb = open_set(Engine(path, provider="cpu"), files, cache)
        if reference is None:
            reference = emb
        cosines = np.sum(normalize(emb) * normalize(reference), axis=1)
        results[name] = {**quality, "cosine_to_fp32_mean": float(cosines.mean()),
                         "cosine_to_fp32_min": float(cosines.min()), "size_mb": path.stat().st_size / 1e6}
        for batch in (1, 4):
            print(f"{name}: batch {batch} ...", flush=True)
            results[name][f"batch{batch}"] = timed(path, batch, args.repeats)
        print(name, json.dumps(results[name]), flush=True)
    fp32 = results["fp32"]["batch1"]["p50"]
    for name in results:
        results[name]["speedup_b1"] = fp32 / results[name]["batch1"]["p50"]
    report = {"machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} "
                         f"CPUs, {platform.platform()}", "onnxruntime": __import__("onnxruntime").__version__,
              "command": " ".join(sys.argv), "model": str(args.model), "fingerprint": info.fingerprint,
              "calibration": calibration,
              "results": results}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
