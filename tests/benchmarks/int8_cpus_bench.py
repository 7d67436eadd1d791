"""int8 on every CPU: agreement with fp32 of each int8 recipe, on this CPU and on an emulated
AVX2-only one, and speed where it can be timed (natively).

For each recipe (u8s8: uint8 activations x int8 weights; u8u8: uint8 x uint8) the shipped base
model's static int8 copy is built here, then run natively and under ``qemu-x86_64 -cpu
EPYC-Rome`` (Zen 2: AVX2, no AVX-512, no VNNI; ONNX Runtime picks its kernels from CPUID, which
qemu emulates). Reported per CPU and recipe: the least and mean cosine to fp32 on real speech
(LibriSpeech test-other windows, voices neither model nor calibration heard), and the cosine of
the agreement check on its synthetic windows (``models.agreement``), so that the check can be
seen to refuse exactly the copies that drift on speech. Speed (ms per window at batch 1 and 4,
median of repeated calls) is timed natively only: emulation says nothing about speed. What a
recipe that does not saturate costs in accuracy is the same on every CPU (the emulated AVX2
cosines equal the native ones to the last digit), so open-set EER on the unseen test-other voices
(cpu_bench.py's measure: voiceprints from 6 files a voice, the rest identified) is measured natively.

    .venv/bin/python tests/benchmarks/int8_cpus_bench.py --out tests/benchmarks/results/int8_cpus.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spkrec.models.agreement import WINDOWS

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO.parent / "shared" / "data" / "librispeech-test-other"
VOICES = ("533", "1998", "3005", "2609", "367", "2414")
EMULATED = "EPYC-Rome"


def _speech_windows(info, count: int) -> np.ndarray:
    from spkrec.models.audio import load_audio
    from spkrec.models.windows import frame_windows

    windows = np.concatenate([frame_windows(load_audio(sorted((LIBRI / v).glob("*.flac"))[1], info.sample_rate),
                                            info.window_samples, info.hop_samples * 3) for v in VOICES])
    return windows[np.linspace(0, len(windows) - 1, count).astype(int)]


def prepare(work: Path, count: int, synthetic: int = WINDOWS) -> dict:
    """Here, natively: every recipe's copy, ``count`` speech windows and the first ``synthetic``
    check windows, and fp32's embeddings of them."""
    from spkrec.models.agreement import check_windows
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine
    from spkrec.models.quantize import RECIPES, quantize_static_int8

    fp32 = Engine(base_model_path(), provider="cpu")
    speech = _speech_windows(fp32.info, count)
    synthetic = check_windows(fp32.info.sample_rate, fp32.info.window_samples)[:synthetic]
    np.savez(work / "windows.npz", speech=speech, synthetic=synthetic,
             speech_ref=fp32.embed_windows(speech, 8), synthetic_ref=fp32.embed_windows(synthetic, 8))
    for recipe in RECIPES:
        quantize_static_int8(base_model_path(), work / f"{recipe}.onnx", fp32.info.int8_ranges, recipe)
    return {"windows": len(speech), "synthetic": len(synthetic)}


def measure(work: Path, recipe: str) -> dict:
    """In whichever CPU runs this process: cosines of one recipe's copy to the stored fp32 embeddings."""
    from spkrec.models.agreement import min_cosine
    from spkrec.models.engine import Engine
    from spkrec.models.quantize import cpu_class, recipe_for

    data = np.load(work / "windows.npz")
    engine = Engine(work / f"{recipe}.onnx", provider="cpu", precision="int8")
    out = {"cpu_class": cpu_class(), "recipe_chosen_here": recipe_for(cpu_class())}
    for kind in ("speech", "synthetic"):
        emb = engine.embed_windows(data[kind], 8)
        ref = data[f"{kind}_ref"]
        cos = np.sum(emb * ref, axis=1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
        out[kind] = {"min": round(float(cos.min()), 4), "mean": round(float(cos.mean()), 4)}
        assert abs(out[kind]["min"] - min_cosine(ref, emb)) < 1e-4
    return out


def speed(work: Path, recipe: str, repeats: int) -> dict:
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine

    path = base_model_path() if recipe == "fp32" else work / f"{recipe}.onnx"
    engine = Engine(path, provider="cpu", precision="fp32" if recipe == "fp32" else "int8")
    data = np.load(work / "windows.npz")["speech"]
    out = {}
    for batch in (1, 4):
        engine.embed(data[:batch])
        times = []
        for i in range(repeats):
            engine.embed(data[i % 4: i % 4 + batch])
            times.append(engine.last_ms)
        out[f"ms_per_window_b{batch}"] = round(float(np.median(times)) / batch, 1)
    return out


def open_sets(work: Path) -> dict:
    """File and window EER of fp32 and each recipe on the unseen voices (cpu_bench.open_set)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_bench import open_set, voices
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine
    from spkrec.models.quantize import RECIPES

    files, cache, out = voices(LIBRI), {}, {}
    for recipe in ("fp32", *RECIPES):
        path = base_model_path() if recipe == "fp32" else work / f"{recipe}.onnx"
        row, _ = open_set(Engine(path, provider="cpu", precision="fp32" if recipe == "fp32" else "int8"), files, cache)
        out[recipe] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        print(f"open set {recipe}: file EER {row['eer']:.2%}, window EER {row['window_eer']:.2%}, "
              f"file accuracy {row['file_accuracy']:.0%}", flush=True)
    return out


def start_child(work: Path, recipe: str, emulate: bool) -> subprocess.Popen:
    """``measure`` in a process of its own, natively or on the emulated AVX2-only CPU."""
    cmd = [sys.executable, __file__, "--measure", recipe, "--work", str(work)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64"), "-cpu", EMULATED, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_child(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, proc.args[:4]))}... failed: {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--open-set-only", action="store_true", help="only the native EER of each recipe, "
                        "merged into --out")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.work, args.measure)))
        return
    from spkrec.models.agreement import AGREEMENT
    from spkrec.models.quantize import RECIPES, cpu_class

    work = Path(tempfile.mkdtemp(prefix="int8-cpus-"))
    started = time.time()
    if args.open_set_only:
        prepare(work, 4)
        result = json.loads(args.out.read_text())
        result["open_set_native"] = open_sets(work)
        result["command"] += " && python tests/benchmarks/int8_cpus_bench.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
              "native_cpu_class": cpu_class(), "emulated": f"qemu-x86_64 -cpu {EMULATED} (AVX2, no AVX-512/VNNI)",
              "agreement_threshold": AGREEMENT, **prepare(work, args.windows), "cpus": {}}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    for where, emulate in (("native", False), ("avx2_emulated", True)):
        if emulate and shutil.which("qemu-x86_64") is None:
            print("qemu-x86_64 not installed (apt-get install qemu-user): emulated AVX2 skipped")
            continue
        result["cpus"][where] = {}
        t = time.time()
        children = {recipe: start_child(work, recipe, emulate) for recipe in RECIPES}  # side by side: 2 cores
        for recipe, proc in children.items():
            row = finish_child(proc)
            row["accepted_by_check"] = row["synthetic"]["min"] >= AGREEMENT
            result["cpus"][where][recipe] = row
            print(f"{where:14s} {recipe}: speech min {row['speech']['min']:.4f} mean {row['speech']['mean']:.4f}; "
                  f"check {row['synthetic']['min']:.4f} ({'kept' if row['accepted_by_check'] else 'refused'}); "
                  f"{time.time() - t:.0f} s for both", flush=True)
    result["speed_native"] = {r: speed(work, r, args.repeats) for r in ("fp32", *RECIPES)}
    for recipe, row in result["speed_native"].items():
        print(f"native speed {recipe}: {row}")
    result["open_set_native"] = open_sets(work)
    result["seconds"] = round(time.time() - started)
    result["command"] = "python tests/benchmarks/int8_cpus_bench.py " + " ".join(sys.argv[1:])
    shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
