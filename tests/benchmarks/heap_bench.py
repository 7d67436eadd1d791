"""Benchmark: where a long-running daemon's resident memory goes between batches, and what keeps it flat.

The shipped base model's int8 copy (the CPU default) runs flat out on batches of the sizes a
multi-input daemon meets (mostly 1-4 windows, and now and then a burst of 5-16 after a stall),
while a second thread allocates capture blocks as the readers do. Every 5 s, right after a
one-window batch (nothing in flight), the process's VmRSS is read: the *resting* RSS, the part
that stays. Each strategy runs in a fresh process:

- ``none``: glibc as it comes; freed activations stay in its heaps;
- ``trim``: ``daemon.heap.HeapTrimmer`` (``malloc_trim(0)`` every ``TRIM_EVERY_S``), as the pipeline does;
- ``mmap``: ``mallopt(M_MMAP_THRESHOLD, 256 KiB)``, every large buffer mapped and unmapped per call;
- ``arena2``: ``mallopt(M_ARENA_MAX, 2)``, fewer per-thread heaps.

Printed and written: ms per window (median, p95), resting RSS first / max / last and its growth
from the first quarter to the end, and the time a trim takes.

    .venv/bin/python tests/benchmarks/heap_bench.py [--seconds 120] [--out tests/benchmarks/results/heap_cpu.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from soak_bench import machine  # noqa: E402

RESULTS = REPO / "tests" / "benchmarks" / "results"
STRATEGIES = ("none", "trim", "mmap", "arena2")
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _batch_size(rng: random.Random) -> int:
    return rng.choice((1, 1, 2, 3, 4, 4, 4)) if rng.random() > 0.02 else rng.randint(5, 16)


def run_one(strategy: str, seconds: float, cache: Path) -> dict:
    """One strategy in this process (called in a fresh interpreter by ``main``)."""
    libc = ctypes.CDLL("libc.so.6")
    if strategy == "mmap":
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)
    elif strategy == "arena2":
        libc.mallopt(M_ARENA_MAX, 2)
    from spkrec.daemon.heap import HeapTrimmer
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine
    from spkrec.models.precision import choose

    path, precision = choose(base_model_path(), "int8", "cpu", cache)
    engine = Engine(path, "cpu", precision=precision)
    samples = engine.info.window_samples
    stop = threading.Event()

    def reader() -> None:  # capture blocks allocated and dropped on another thread, as sources do
        blocks: list[np.ndarray] = []
        while not stop.is_set():
            blocks = blocks[-200:] + [np.random.standard_normal(1600).astype(np.float32)]
            time.sleep(0.005)

    threading.Thread(target=reader, daemon=True).start()
    for size in range(1, 5):
        engine.warm_up(size)
    trimmer = HeapTrimmer() if strategy == "trim" else None
    trim_ms: list[float] = []
    rng, noise = random.Random(1), np.random.default_rng(0)
    per_window: list[float] = []
    resting: list[float] = []
    start = time.monotonic()
    next_sample = start
    while time.monotonic() - start < seconds:
        size = _batch_size(rng)
        batch = (noise.standard_normal((size, samples)) * 0.1).astype(np.float32)
        began = time.perf_counter()
        engine.embed(batch)
        per_window.append((time.perf_counter() - began) * 1000.0 / size)
        if trimmer is not None:
            before, began = trimmer.trims, time.perf_counter()
            trimmer.tick()
            if trimmer.trims > before:
                trim_ms.append((time.perf_counter() - began) * 1000.0)
        if size == 1 and time.monotonic() >= next_sample:
            resting.append(round(_rss_mb(), 1))
            next_sample += 5.0
    stop.set()
    quarter = resting[len(resting) // 4]
    return {
        "strategy": strategy,
        "windows": len(per_window),
        "ms_per_window_p50": round(float(np.median(per_window)), 2),
        "ms_per_window_p95": round(float(np.percentile(per_window, 95)), 2),
        "resting_rss_first_mb": resting[0], "resting_rss_quarter_mb": quarter,
        "resting_rss_max_mb": max(resting), "resting_rss_last_mb": resting[-1],
        "growth_quarter_to_end_pct": round((resting[-1] - quarter) / quarter * 100.0, 1),
        "trims": len(trim_ms), "trim_ms_p50": round(float(np.median(trim_ms)), 2) if trim_ms else None,
        "trim_ms_max": round(max(trim_ms), 2) if trim_ms else None,
        "resting_rss_mb_every_5s": resting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="run time per strategy")
    parser.add_argument("--out", type=Path, default=RESULTS / "heap_cpu.json")
    parser.add_argument("--one", choices=STRATEGIES, help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.seconds, args.cache)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        child = [sys.executable, __file__, "--cache", tmp, "--one"]
        # the int8 copy is built once here, so no measured process holds what building it took
        subprocess.run(child + ["none", "--seconds", "1"], check=True, capture_output=True)
        rows = []
        for strategy in STRATEGIES:
            done = subprocess.run(child + [strategy, "--seconds", str(args.seconds)],
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{strategy:7s} ms/window p50 {row['ms_per_window_p50']:6.2f} p95 {row['ms_per_window_p95']:6.2f}"
                  f"  resting RSS {row['resting_rss_first_mb']:.0f} -> {row['resting_rss_last_mb']:.0f} MB"
                  f" (max {row['resting_rss_max_mb']:.0f}, {row['growth_quarter_to_end_pct']:+.1f} % from the"
                  f" first quarter)  trims {row['trims']} p50 {row['trim_ms_p50']} ms max {row['trim_ms_max']} ms")
    result = {
        "command": "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {**machine(), "libc": os.confstr("CS_GNU_LIBC_VERSION")},
        "seconds_per_strategy": args.seconds,
        "model": "shipped base model, int8 copy (the CPU default)",
        "strategies": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
