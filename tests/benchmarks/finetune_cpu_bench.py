"""Benchmark: what fine-tuning on a small set of your own voices costs and buys on a 2-core CPU.

Nine LibriSpeech test-other voices (the shipped base model never heard them), four recordings
each to learn from (about ten minutes of speech in all); the other six recordings of each voice
are the test, as recorded and again each through a room and microphone of its own (reverberation,
band limit, gain and noise: tests/conversation.py ``channel``, a stand-in for another session): the
share of test files `spkrec identify` names right, closed-set, with the run's
own model (its trained speakers) or, for the shipped model untrained, with the nine voices
enrolled from the same four recordings. Wall time of `spkrec train` as a user runs it (decoding,
training, evaluation, export), and the estimate it printed before its first step.

    .venv/bin/python tests/benchmarks/finetune_cpu_bench.py [--variants base,freeze4-60,...] \\
        [--out tests/benchmarks/results/finetune_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conversation import channel  # noqa: E402
from live_bench import machine  # noqa: E402

from spkrec.models.audio import load_audio  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEST_OTHER = REPO.parent / "shared" / "data" / "librispeech-test-other"
VOICES = ("1688", "1998", "2033", "2414", "2609", "3005", "3080", "3331", "367")
LEARN = 4
# name -> extra `spkrec train` flags (None: the shipped model, enrolled, no training)
VARIANTS: dict[str, list[str] | None] = {
    "base": None,
    "defaults": [],
    "freeze4-60": ["--freeze-layers", "4", "--min-steps", "60", "--steps-per-speaker", "0"],
    "freeze3-100": ["--freeze-layers", "3", "--min-steps", "100", "--steps-per-speaker", "0"],
}


def spkrec(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(Path(sys.executable).with_name("spkrec")), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"spkrec {' '.join(args[:2])} failed: {done.stderr.strip()[-800:]}")
    return done


def accuracy(model: Path, tests: list[tuple[str, Path]], config: Path) -> dict[str, float]:
    """Closed set (the best candidate is the right voice) and as shown (the label, where a score
    under the threshold reads ``unknown``)."""
    done = spkrec("identify", "--json", *[str(p) for _, p in tests], "--model", str(model), "--config", str(config))
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    best = sum(r["candidates"][0][0] == who for r, (who, _) in zip(rows, tests)) / len(tests)
    shown = sum(r["label"] == who for r, (who, _) in zip(rows, tests)) / len(tests)
    return {"closed_set": round(best, 4), "labelled_right": round(shown, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="base,freeze4-60,freeze3-100")
    parser.add_argument("--out", type=Path, default=REPO / "tests/benchmarks/results/finetune_cpu.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spkrec-finetune-"))
    data = work / "data"
    tests = []
    for voice in VOICES:
        files = sorted((TEST_OTHER / voice).glob("*.flac"))
        (data / voice).mkdir(parents=True)
        for f in files[:LEARN]:
            (data / voice / f.name).symlink_to(f)
        tests += [(voice, f) for f in files[LEARN:]]
    rng = np.random.default_rng(0)
    rooms = []
    for i, (voice, f) in enumerate(tests):
        out = work / "rooms" / f"{voice}-{i}.wav"
        out.parent.mkdir(exist_ok=True)
        sf.write(out, channel(load_audio(f, 16000), rng), 16000)
        rooms.append((voice, out))
    results = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "voices": list(VOICES), "learn_files": LEARN,
               "test_files": len(tests), "variants": {}}
    for name in args.variants.split(","):
        flags = VARIANTS[name]
        config = work / f"{name}.toml"
        config.write_text(f"[gallery]\npath = \"{work / (name + '.sqlite')}\"\n[enroll]\nmin_voiced_s = 10.0\n")
        started = time.perf_counter()
        if flags is None:
            from spkrec.models.base import base_model_path

            model = base_model_path()
            for voice in VOICES:
                spkrec("enroll", voice, "--input", *map(str, sorted((data / voice).iterdir())), "--model", str(model),
                       "--config", str(config))
            estimate = None
        else:
            run = work / name
            done = spkrec("train", str(data), "--out", str(run), *flags, "--config", str(config))
            model = run / "model.onnx"
            found = re.search(r"estimate: (\d+) steps x ([\d.]+) s", done.stderr)
            estimate = {"steps": int(found[1]), "s_per_step": float(found[2])} if found else None
        wall = time.perf_counter() - started
        row = {"flags": flags, "wall_s": round(wall, 1), "estimate": estimate,
               "file_accuracy": accuracy(Path(model), tests, config),
               "file_accuracy_other_rooms": accuracy(Path(model), rooms, config)}
        if estimate:
            row["estimated_training_s"] = round(estimate["steps"] * estimate["s_per_step"], 1)
        results["variants"][name] = row
        print(name, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
