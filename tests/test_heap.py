"""The daemon hands freed heap memory back to the OS (daemon.heap), from its pipeline loop."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from spkrec.daemon.service.heap import HeapTrimmer
from spkrec.daemon.pipeline.run import Pipeline
from spkrec.models.base import base_model_path
from spkrec.models.config import Config
from spkrec.models.engine import Engine

from conftest import speaker_files

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from live_bench import make_stream  # noqa: E402  (the benchmark's stream builder is the daemon's own)

GLIBC = HeapTrimmer().available

# 4,000 blocks of 64 KiB (under glibc's mmap threshold, so they come from the heap) are freed
# while one block allocated after them keeps the heap's top in use: free() alone cannot shrink it.
FREED_BUT_HELD = """
from pathlib import Path
import numpy as np
from spkrec.daemon.service.heap import HeapTrimmer
def rss_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))
blocks = [np.ones(8192) for _ in range(4000)]
pin = np.ones(8192)
del blocks
held = rss_mb()
HeapTrimmer().trim()
print(held, rss_mb())
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_a_trim_gives_freed_heap_back_to_the_os():
    done = subprocess.run([sys.executable, "-c", FREED_BUT_HELD], capture_output=True, text=True, check=True)
    held, trimmed = map(int, done.stdout.split())
    assert held >= 250, done.stdout  # 250 MB freed, still resident
    assert held - trimmed >= 200, done.stdout


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_the_pipeline_loop_trims_while_it_runs(tmp_path):
    """Three seconds of speech in real time, a trim due at once and then every 0.5 s: the loop
    makes them, both between engine calls and while it waits for audio."""
    speech = max(speaker_files("1688"), key=lambda p: sf.info(str(p)).duration)
    audio, rate = sf.read(str(speech), dtype="float32")
    wav = tmp_path / "speech.wav"
    sf.write(str(wav), audio[: 3 * rate], rate)
    engine = Engine(base_model_path(), provider="cpu")
    stream = make_stream(engine, Config(), wav, realtime=True, name="front")
    pipeline = Pipeline([stream], engine, heap=HeapTrimmer(interval_s=0.5))
    began = time.monotonic()
    pipeline.run(threading.Event())
    elapsed = time.monotonic() - began
    assert stream.state.windows >= 2
    assert 5 <= pipeline.heap.trims <= elapsed / 0.5 + 1, (pipeline.heap.trims, elapsed)  # due ones, no more
