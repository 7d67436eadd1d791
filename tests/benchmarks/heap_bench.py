"""Benchmark: does a load spike leave the daemon's resident memory higher for good, and what stops it.

The shipped base model's int8 copy (the CPU default) is run as a one-input daemon runs it: a
one-window batch every ``HOP_S`` (faster than the real 0.5-s hop, to fit more in the time), while
a second thread allocates capture blocks as the readers do. Every ``BURST_EVERY_S`` comes a
spike: one batch of 16 windows, what a stalled pipeline queues. Just before each spike the
process's VmRSS is read: the *resting* RSS, what the previous spike left behind. Each strategy
runs in a fresh process:

- ``none``: glibc as it comes; freed activations stay in its heaps;
- ``trim``: ``daemon.heap.HeapTrimmer`` (``malloc_trim(0)`` every ``TRIM_EVERY_S``), as the pipeline does;
- ``mmap``: ``mallopt(M_MMAP_THRESHOLD, 256 KiB)``, every large buffer mapped and unmapped per call;
- ``arena2``: ``mallopt(M_ARENA_MAX, 2)``, fewer per-thread heaps.

Printed and written: ms per one-window batch (p50, p95), the resting RSS before the first
spike and before each later one, and the time a trim takes.

    .venv/bin/python tests/benchmarks/heap_bench.py [--seconds 150] [--out tests/benchmarks/results/heap_cpu.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
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


HOP_S = 0.25  # one window per hop, as one input
BURST_EVERY_S = 25.0  # longer than TRIM_EVERY_S: a trim is due between two spikes
BURST = 16  # MAX_BATCH: what a stalled pipeline sends at once


def run_one(strategy: str, seconds: float, cache: Path) -> dict:
    """One strategy in this process (called in a fresh interpreter by ``main``)."""
    libc = ctypes.CDLL("libc.so.6")
    if strategy == "mmap":
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)
    elif strategy == "arena2":
        libc.mallopt(M_ARENA_MAX, 2)
    from spkrec.daemon.service.heap import HeapTrimmer
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine
    from spkrec.models.precision import choose

    path, precision, _ = choose(base_model_path(), "int8", "cpu", cache)
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
    noise = np.random.default_rng(0)
    per_window: list[float] = []
    resting: list[float] = []
    start = time.monotonic()
    next_burst, next_hop = start + BURST_EVERY_S, start
    while time.monotonic() - start < seconds:
        burst = time.monotonic() >= next_burst
        if burst:
            resting.append(round(_rss_mb(), 1))
            next_burst += BURST_EVERY_S
        batch = (noise.standard_normal((BURST if burst else 1, samples)) * 0.1).astype(np.float32)
        began = time.perf_counter()
        engine.embed(batch)
        if not burst:
            per_window.append((time.perf_counter() - began) * 1000.0)
        if trimmer is not None:
            before, began = trimmer.trims, time.perf_counter()
            trimmer.tick()
            if trimmer.trims > before:
                trim_ms.append((time.perf_counter() - began) * 1000.0)
        next_hop += HOP_S
        time.sleep(max(0.0, next_hop - time.monotonic()))
    stop.set()
    return {
        "strategy": strategy,
        "windows": len(per_window), "spikes": len(resting),
        "ms_per_window_p50": round(float(np.median(per_window)), 2),
        "ms_per_window_p95": round(float(np.percentile(per_window, 95)), 2),
        "resting_rss_before_first_spike_mb": resting[0], "resting_rss_max_mb": max(resting),
        "resting_rss_last_mb": resting[-1],
        "growth_after_spikes_pct": round((resting[-1] - resting[0]) / resting[0] * 100.0, 1),
        "trims": len(trim_ms), "trim_ms_p50": round(float(np.median(trim_ms)), 2) if trim_ms else None,
        "trim_ms_max": round(max(trim_ms), 2) if trim_ms else None,
        "resting_rss_mb_before_each_spike": resting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="run time per strategy")
    parser.add_argument("--out", type=Path, default=RESULTS / "heap_cpu.json")
    parser.add_argument("--one", choices=STRATEGIES, help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.seconds, args.cache)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        child = [sys.executable, __file__, "--cache", tmp, "--one"]
        from spkrec.models.base import base_model_path
        from spkrec.models.precision import choose

        choose(base_model_path(), "int8", "cpu", Path(tmp))  # built here: no measured process holds what it took
        rows = []
        for strategy in STRATEGIES:
            done = subprocess.run(child + [strategy, "--seconds", str(args.seconds)],
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{strategy:7s} ms/window p50 {row['ms_per_window_p50']:6.2f} p95 {row['ms_per_window_p95']:6.2f}"
                  f"  resting RSS before each of {row['spikes']} spikes {row['resting_rss_mb_before_each_spike']} MB"
                  f" ({row['growth_after_spikes_pct']:+.1f} %)  trims {row['trims']} p50 {row['trim_ms_p50']} ms"
                  f" max {row['trim_ms_max']} ms", flush=True)
    result = {
        "command": "python " + " ".join([str(Path(__file__).relative_to(REPO))] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {**machine(), "libc": os.confstr("CS_GNU_LIBC_VERSION")},
        "seconds_per_strategy": args.seconds, "hop_s": HOP_S, "spike_every_s": BURST_EVERY_S, "spike_windows": BURST,
        "model": "shipped base model, int8 copy (the CPU default)",
        "strategies": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
