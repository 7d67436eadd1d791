"""Benchmark: the README's real training runs, side by side on one machine.

Data: the 10 LibriSpeech test-other speakers in ../shared/data (all files) plus the four
Fish Fillets voices (30 clips each, Debian packages), split per speaker by file (80/20).
Each configuration trains through the real CLI; results go to OUT/results.json and a
Markdown table on stdout.

    .venv/bin/python tests/benchmarks/training_runs.py --out /tmp/spkrec-bench [--only speaker-init,imagenet-init]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from spkrec.models.config import Config
from spkrec.daemon.commands.democorpus import VOICES, _voice_files, unpack_packages

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO.parent / "shared" / "data" / "librispeech-test-other"
FISH_CLIPS = 30

# The two starting points of the current network (no stem max-pool), at a step count a 2-core
# CPU runs in minutes: the shipped base speaker model against ImageNet.
SHORT = ["--min-steps", "100", "--steps-per-speaker", "0", "--batch-size", "16", "--freeze-layers", "2"]
CONFIGS = {
    "speaker-init": ["--pretrained", "speaker", *SHORT],
    "imagenet-init": ["--pretrained", "imagenet", *SHORT],
    # the earlier table's runs (torchvision's stem and average pooling, as then)
    "default": ["--pretrained", "imagenet", "--stem-pool", "2x2", "--pooling", "avg"],  # ImageNet init, AAM, min_steps 300
    "none": ["--pretrained", "none", "--stem-pool", "2x2", "--pooling", "avg"],
    "original": ["--pretrained", "imagenet", "--stem-pool", "2x2", "--pooling", "avg", "--loss", "softmax", "--min-steps", "0",
                 "--steps-per-speaker", "0"],
    "aam-5ep": ["--pretrained", "imagenet", "--stem-pool", "2x2", "--pooling", "avg", "--min-steps", "0",
                "--steps-per-speaker", "0"],
}


def build_manifest(out: Path) -> Path:
    rows = [(str(f), f"ls-{d.name}") for d in sorted(LIBRI.iterdir()) if d.is_dir() for f in sorted(d.glob("*.flac"))]
    sound_root = unpack_packages(Config().cache_dir())
    for label, language, code in VOICES:
        rows += [(str(f), label) for f in _voice_files(sound_root, language, code)[:FISH_CLIPS]]
    path = out / "real.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configuration names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(args.out)
    spkrec = Path(sys.executable).with_name("spkrec")
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.only.split(","):
        run_dir = args.out / f"{name}-seed{args.seed}"
        command = [str(spkrec), "train", str(manifest), "--out", str(run_dir), "--seed", str(args.seed), *CONFIGS[name]]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results[f"{name}-seed{args.seed}"] = {
            "command": " ".join(["spkrec", *command[1:]]),
            "minutes": round((time.perf_counter() - start) / 60, 1),
            "file_accuracy": metrics["file_accuracy"], "window_accuracy": metrics["window_accuracy"],
            "eer_file_pairs": metrics["file_pairs"]["eer"], "min_dcf": metrics["file_pairs"]["min_dcf_p0.01"],
            "eer_window_vs_prototype": metrics["window_vs_prototype"]["eer"], "pretrained": metrics["pretrained"],
            "epochs": len(metrics["history"]), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU",
        }
        results_path.write_text(json.dumps(results, indent=1))
    print("| run | init | epochs | file acc | window acc | EER (file pairs) | minDCF | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['pretrained']} | {r['epochs']} | {r['file_accuracy']:.1%} | {r['window_accuracy']:.1%} | "
              f"{r['eer_file_pairs']:.2%} | {r['min_dcf']:.3f} | {r['minutes']} |")


if __name__ == "__main__":
    main()
