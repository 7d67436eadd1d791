"""Where live audio comes from: a microphone, a file, raw PCM on stdin, or the demo stream.

Every source yields ``Block``s of mono float32 at the model's rate, resampling on the fly when
the input runs at another rate, so nothing downstream knows which source it is reading. A new
source is one new class with ``name``, ``blocks(stop)`` and ``close()``.
"""

from __future__ import annotations

import csv
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import soxr

from spkrec.models.audio import load_audio, pcm16_to_float
from spkrec.models.errors import DeviceError

from .devices import InputDevice, portaudio, resolve
from .events import StatusEvent


@dataclass(frozen=True)
class Block:
    samples: np.ndarray  # mono float32 at the model rate
    arrival: float  # time.monotonic() when the audio reached us: the start of latency


class Source(Protocol):
    name: str
    native_rate: int

    def blocks(self, stop: threading.Event) -> Iterator[Block]: ...

    def close(self) -> None: ...


class _Resampler:
    """Streaming resampler that keeps filter state across blocks (no clicks at block edges)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32") if rate_in != rate_out else None

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return samples
        return self.stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)


class MicrophoneSource:
    """A PortAudio input stream. The callback only copies into a bounded queue; overflows and
    dropped blocks are counted, and a lost device is reopened with exponential backoff."""

    def __init__(self, device: InputDevice, rate: int, block_s: float, queue_s: float, reconnect_max_s: float,
                 on_status: Callable[[StatusEvent], None]) -> None:
        self.device, self.rate, self.block_s = device, rate, block_s
        self.reconnect_max_s, self.on_status = reconnect_max_s, on_status
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, int(queue_s / block_s)))
        self.overflows = 0
        self.dropped_blocks = 0
        self.stream = None
        self.native_rate = rate
        self.name = device.name
        self._open()

    def _choose_rate(self, sd) -> int:
        try:
            sd.check_input_settings(device=self.device.index, samplerate=self.rate, channels=1, dtype="float32")
            return self.rate
        except Exception:  # the device cannot capture at the model rate: use its own and resample
            return self.device.default_rate

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        try:
            self.queue.put_nowait((indata[:, 0].copy(), time.monotonic()))
        except queue.Full:
            self.dropped_blocks += 1

    def _open(self) -> None:
        sd = portaudio()
        self.native_rate = self._choose_rate(sd)
        self.resampler = _Resampler(self.native_rate, self.rate)
        try:
            self.stream = sd.InputStream(device=self.device.index, channels=1, samplerate=self.native_rate,
                                         dtype="float32", blocksize=int(self.native_rate * self.block_s),
                                         callback=self._callback)
            self.stream.start()
        except Exception as exc:
            self.stream = None
            raise DeviceError(f"cannot open input device {self.device.index} '{self.device.name}': {exc}") from None
        self.name = f"{self.device.name} ({self.native_rate} Hz)"

    def _reconnect(self, stop: threading.Event) -> bool:
        """Reopen the device by name until it answers; True when capture runs again."""
        self.close()
        delay = 0.5
        while not stop.is_set():
            self.on_status(StatusEvent("reconnecting", f"input device lost; retrying in {delay:.1f} s",
                                       {"device": self.device.name}))
            if stop.wait(delay):
                return False
            try:
                sd = portaudio()
                sd._terminate()  # PortAudio lists devices once per initialisation
                sd._initialize()
                self.device = resolve(self.device.name)
                self._open()
                self.on_status(StatusEvent("listening", "input device back", {"device": self.name}))
                return True
            except DeviceError:
                delay = min(delay * 2, self.reconnect_max_s)
        return False

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        silence_limit = max(2.0, 10 * self.block_s)
        last = time.monotonic()
        while not stop.is_set():
            try:
                samples, arrival = self.queue.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() - last > silence_limit:
                    self.on_status(StatusEvent("device-lost", f"no audio from '{self.device.name}' for "
                                                              f"{silence_limit:.0f} s", {"device": self.device.name}))
                    if not self._reconnect(stop):
                        return
                    last = time.monotonic()
                continue
            last = arrival
            yield Block(self.resampler(samples), arrival)

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:  # a vanished device can fail to close; it is gone either way
                pass
            self.stream = None


class FileSource:
    """A recording replayed in real time (as a microphone would deliver it) or as fast as possible."""

    def __init__(self, path: Path, rate: int, block_s: float, realtime: bool) -> None:
        self.samples = load_audio(path, rate)
        self.rate, self.block, self.realtime = rate, max(1, int(rate * block_s)), realtime
        self.name, self.native_rate = str(path), rate
        self.duration_s = self.samples.size / rate

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        start = time.monotonic()
        for offset in range(0, self.samples.size, self.block):
            if stop.is_set():
                return
            if self.realtime:
                due = start + (offset + self.block) / self.rate
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
            yield Block(self.samples[offset : offset + self.block], time.monotonic())

    def close(self) -> None:
        pass


class StdinSource:
    """Raw little-endian 16-bit mono PCM on stdin (``--input -``) at ``[audio] stdin_rate``."""

    def __init__(self, native_rate: int, rate: int, block_s: float) -> None:
        self.native_rate, self.rate = native_rate, rate
        self.bytes_per_block = 2 * max(1, int(native_rate * block_s))
        self.resampler = _Resampler(native_rate, rate)
        self.name = f"stdin ({native_rate} Hz PCM16)"

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        stream = sys.stdin.buffer
        pending = b""
        while not stop.is_set():
            chunk = stream.read(self.bytes_per_block)
            if not chunk:
                break
            pending += chunk
            usable = len(pending) - len(pending) % 2
            if usable:
                yield Block(self.resampler(pcm16_to_float(pending[:usable])), time.monotonic())
                pending = pending[usable:]
        tail = self.resampler(np.zeros(0, np.float32), last=True)
        if tail.size:
            yield Block(tail, time.monotonic())

    def close(self) -> None:
        pass


def demo_conversation(manifest: Path, rate: int, clips_per_turn: int = 2, gap_s: float = 1.0) -> tuple[np.ndarray, list]:
    """A conversation of held-out clips: speakers take turns, with a pause between turns.

    Returns the audio and the reference turns [(start_s, end_s, label)].
    """
    with manifest.open(newline="") as handle:
        rows = [(Path(r["path"]), r["label"]) for r in csv.DictReader(handle)]
    voices: dict[str, list[Path]] = {}
    for path, label in rows:
        voices.setdefault(label, []).append(path)
    labels = sorted(voices)
    parts, turns, cursor = [], [], 0
    gap = np.zeros(int(gap_s * rate), np.float32)
    n_turns = min(len(v) for v in voices.values()) // clips_per_turn * len(labels)
    for turn in range(n_turns):
        label = labels[turn % len(labels)]
        index = (turn // len(labels)) * clips_per_turn
        speech = np.concatenate([load_audio(p, rate) for p in voices[label][index : index + clips_per_turn]])
        turns.append((cursor / rate, (cursor + speech.size) / rate, label))
        parts += [speech, gap]
        cursor += speech.size + gap.size
    return np.concatenate(parts), turns


class DemoSource(FileSource):
    """The embedded demo: a looping conversation of held-out demo voices, in real time."""

    def __init__(self, manifest: Path, rate: int, block_s: float) -> None:
        self.samples, self.turns = demo_conversation(manifest, rate)
        self.rate, self.block, self.realtime = rate, max(1, int(rate * block_s)), True
        self.name, self.native_rate = "demo conversation (no microphone)", rate

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        while not stop.is_set():
            yield from super().blocks(stop)
