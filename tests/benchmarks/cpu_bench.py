"""CPU speed, memory and start-up: fp32 against static and dynamic int8, side by side in one run.

Static int8 is ONNX Runtime's QDQ quantisation with per-channel weights and activation ranges
calibrated on real speech windows of the model's own training audio (LibriSpeech
train-clean-100 for the base model); the DFT/mel front end stays float. Dynamic int8 is what
`spkrec export --int8` made so far. For each: ms per window at batch 1 and 4 (p50/p95, each in
a fresh process, with its RSS), file size, cosine to the fp32 embeddings, and open-set
identification on voices no model heard (LibriSpeech test-other: voiceprints from each voice's
first 6 files, the rest identified; EER over file/voiceprint pairs). Then, for fp32 and static
int8 (what ``[model] precision`` chooses between): the real-time factor of the live pipeline for
1 and 4 inputs (files read as fast as they go), and start-up: the installed ``spkrec-live`` on a
file replayed in real time, seconds from the command to its ``listening`` event and to its first
decision, and its RSS then, with the int8 copy cached (median of 5) and once with an empty cache
(the copy built). Memory over an hour is soak_bench.py's.

    .venv/bin/python tests/benchmarks/cpu_bench.py --out tests/benchmarks/results/cpu_base.json
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(REPO / "tests" / "benchmarks"))

from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.base import base_model_path  # noqa: E402
from spkrec.models.calibration import verification  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.models.scoring import normalize  # noqa: E402
from spkrec.models.windows import frame_windows  # noqa: E402

ENROLL_FILES = 6


def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    """What `spkrec export --int8` wrote before static int8: dynamic quantisation, front end float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from spkrec.models.quantize import excluded_nodes

    import onnx

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                     nodes_to_exclude=[n for n in excluded_nodes(onnx.load(str(src))) if "/frontend/" in n])


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
    prints, tests, all_windows, test_windows = {}, [], [], []
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
        test_windows += [(name, w) for w in all_windows[len(all_windows) - len(paths) + ENROLL_FILES:]]
    names = list(prints)
    matrix = np.stack([prints[n] for n in names])
    scores = np.stack([matrix @ e for _, e in tests])
    truth = np.array([names.index(n) for n, _ in tests])
    accuracy = float((scores.argmax(axis=1) == truth).mean())
    mask = np.zeros_like(scores, bool)
    mask[np.arange(len(truth)), truth] = True
    result = verification(scores[mask], scores[~mask])
    # every 2-s window of the test files against every voiceprint: thousands of trials, not forty
    windows = np.concatenate([w for _, w in test_windows])
    owners = np.concatenate([[names.index(n)] * len(w) for n, w in test_windows])
    window_scores = normalize(windows) @ matrix.T
    hit = np.zeros_like(window_scores, bool)
    hit[np.arange(len(owners)), owners] = True
    per_window = verification(window_scores[hit], window_scores[~hit])
    return {"file_accuracy": accuracy, "eer": float(result.eer), "files": len(tests), "voices": len(names),
            "window_eer": float(per_window.eer), "window_accuracy": float((window_scores.argmax(axis=1) == owners).mean()),
            "window_trials": int(window_scores.size)}, np.concatenate(all_windows)


def rtf(model: Path, precision: str, inputs: int, seconds: float, folder: Path) -> dict:
    """The live pipeline over ``inputs`` files at once, as fast as they go: wall s / audio s."""
    from streams_bench import mean_batch, run, voice

    from live_bench import write_wav
    from spkrec.models.config import Config

    engine = Engine(model, provider="cpu", precision=precision)
    cfg = Config()
    cfg.decision.operating_point = "eer"
    rate = engine.info.sample_rate
    speakers = sorted(p for p in (SHARED / "librispeech-test-other").iterdir() if p.is_dir())[:inputs]
    wavs = [write_wav(folder, f"in{i}-{s.name}.wav", voice(s, seconds, rate), rate) for i, s in enumerate(speakers)]
    wall, pipeline, _ = run(engine, cfg, wavs, realtime=False)
    return {"inputs": inputs, "rtf": round(wall / seconds, 4), "mean_batch": mean_batch(pipeline)}


def start_up(env: dict, wav: Path, precision: str) -> dict:
    """`spkrec-live --input WAV` (real time) from the command to "listening" and to the first
    decision, and the daemon's RSS at its first decision."""
    exe = Path(sys.executable).with_name("spkrec-live")
    start = time.perf_counter()
    process = subprocess.Popen([str(exe), "--input", str(wav), "--no-ui", "--events", "-", "--precision", precision],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    seen: dict = {}
    for line in process.stdout:
        event = json.loads(line)
        if event.get("state") == "listening":
            seen["listening_s"] = time.perf_counter() - start
            seen["precision"] = event.get("precision")
        elif event["event"] == "speaker":
            seen["first_decision_s"] = time.perf_counter() - start
            status = Path(f"/proc/{process.pid}/status").read_text()
            seen["rss_mb"] = next(int(l.split()[1]) / 1024 for l in status.splitlines() if l.startswith("VmRSS:"))
            break
    process.terminate()
    process.wait(30)
    return seen


def start_ups(model_precisions: list[str], runs: int) -> dict:
    from conversation import assemble

    folder = Path(tempfile.mkdtemp(prefix="startup-"))
    wav = folder / "speech.wav"
    assemble([(p, "x") for p in sorted((SHARED / "librispeech-test-other" / "533").glob("*.flac"))[:2]], wav)
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "XDG_DATA_HOME": str(folder / "data"),
           "XDG_CONFIG_HOME": str(folder / "config")}
    env.pop("SPKREC_CONFIG", None)
    out = {"cold_int8": start_up(env, wav, "auto")}  # empty cache: the int8 copy is built first
    for precision in model_precisions:
        got = [start_up(env, wav, precision) for _ in range(runs)]
        out[precision] = {key: float(np.median([g[key] for g in got])) for key in ("listening_s", "first_decision_s",
                                                                                 "rss_mb")}
        out[precision]["precision"] = got[0]["precision"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=base_model_path())
    parser.add_argument("--out", type=Path)
    parser.add_argument("--calibration-voices", type=int, default=60)
    parser.add_argument("--per-voice", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--rtf-seconds", type=float, default=30.0, help="audio per input for the real-time factor")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--timing-only", action="store_true",
                        help="keep --out's accuracy numbers; measure speed, RTF and start-up again (on an idle machine)")
    parser.add_argument("--startup-only", action="store_true",
                        help="keep everything else in --out; measure start-up again (after a daemon-side change)")
    parser.add_argument("--recalibrate", action="store_true", help="measure ranges here even if the model has some")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        timing_child(args.child, args.batch, args.repeats)
        return
    if args.startup_only:
        if args.out is None or not args.out.is_file():
            parser.error("--startup-only updates an earlier --out file")
        load = os.getloadavg()
        startup = start_ups(["auto", "fp32"], args.startup_runs)
        print("start-up", json.dumps(startup), flush=True)
        report = {**json.loads(args.out.read_text()), "start_up": startup,
                  "start_up_timing": {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average_at_start": load,
                                      "command": " ".join(sys.argv)}}
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        return

    from spkrec.models.quantize import quantize_static_int8
    from spkrec.training.int8 import measure_ranges

    load = os.getloadavg()
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
    quantize_dynamic_int8(work / "float.onnx", dynamic)
    models = {"fp32": args.model, "int8 static": static, "int8 dynamic": dynamic}

    previous = json.loads(args.out.read_text()) if args.timing_only and args.out and args.out.is_file() else {}
    files = voices(SHARED / "librispeech-test-other")
    cache: dict = {}
    results, reference = previous.get("results", {}), None
    for name, path in models.items():
        if not args.timing_only:
            print(f"{name}: open set ...", flush=True)
            quality, emb = open_set(Engine(path, provider="cpu"), files, cache)
            if reference is None:
                reference = emb
            cosines = np.sum(normalize(emb) * normalize(reference), axis=1)
            results[name] = {**quality, "cosine_to_fp32_mean": float(cosines.mean()),
                             "cosine_to_fp32_min": float(cosines.min()), "size_mb": path.stat().st_size / 1e6}
        for batch in (1, 4, 16):  # 16: a file read as fast as it goes (MAX_BATCH), for the memory it takes
            print(f"{name}: batch {batch} ...", flush=True)
            results[name][f"batch{batch}"] = timed(path, batch, args.repeats)
        print(name, json.dumps(results[name]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision in (("fp32", "fp32"), ("int8 static", "int8")):
            path = args.model if precision == "fp32" else static
            results[name]["rtf"] = [rtf(path, precision, n, args.rtf_seconds, Path(tmp)) for n in (1, 4)]
            print(name, "RTF", results[name]["rtf"], flush=True)
    startup = start_ups(["auto", "fp32"], args.startup_runs)
    print("start-up", json.dumps(startup), flush=True)
    fp32 = results["fp32"]["batch1"]["p50"]
    for name in results:
        results[name]["speedup_b1"] = fp32 / results[name]["batch1"]["p50"]
        results[name]["speedup_b4"] = results["fp32"]["batch4"]["p50"] / results[name]["batch4"]["p50"]
    timing = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average_at_start": load, "command": " ".join(sys.argv)}
    report = {**previous, "machine": f"{platform.processor() or platform.machine()}, "
                                      f"{len(os.sched_getaffinity(0))} CPUs, {platform.platform()}",
              "onnxruntime": __import__("onnxruntime").__version__, "model": str(args.model),
              "fingerprint": info.fingerprint, "results": results, "start_up": startup, "timing": timing}
    if not args.timing_only:
        report.update(command=" ".join(sys.argv), calibration=calibration)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
