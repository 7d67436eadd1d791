"""Where live audio comes from: a microphone, a file, raw PCM on stdin, or the demo stream.

Every source yields ``Block``s of mono float32 at the model's rate, resampling on the fly when
the input runs at another rate, so nothing downstream knows which source it is reading. A new
source is one new class with ``name``, ``blocks(stop)`` and ``close()``. ``blocks`` returns soon
after ``stop`` is set, whatever the input is doing, so the daemon can shut down in order.
"""

from __future__ import annotations

import csv
import math
import os
import queue
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import soundfile as sf
import soxr

from spkrec.daemon.pipeline.devices import InputDevice, portaudio, resolve
from spkrec.daemon.pipeline.events import StatusEvent
from spkrec.models.audio import load_audio, pcm16_to_float, to_mono
from spkrec.models.errors import AudioError, DeviceError

POLL_S = 0.1  # how long a source waits for input before looking at ``stop`` again


@dataclass(frozen=True)
class Block:
    samples: np.ndarray  # mono float32 at the model rate
    arrival: float  # time.monotonic() when the audio reached us: the start of latency
    lost_s: float = 0.0  # seconds of audio that never arrived just before this block (dropped, device lost)


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


# PortAudio is one library state per process: Pa_Terminate closes every open stream. The
# microphones open in this process are registered here so a reconnect re-initialises PortAudio
# only when it would interrupt nobody; the lock keeps opening, closing and re-initialising apart.
_PORTAUDIO_LOCK = threading.RLock()
_OPEN: set["MicrophoneSource"] = set()


def open_microphones() -> int:
    """How many microphone streams are running in this process."""
    with _PORTAUDIO_LOCK:
        return len(_OPEN)


class MicrophoneSource:
    """A PortAudio input stream. The callback only copies into a bounded queue; overflows and
    dropped blocks are counted, and a lost device is reopened with exponential backoff. Audio
    that never reached the queue (dropped blocks, the time a device was gone) is reported with
    the next block as ``lost_s``, so stream time can account for it."""

    def __init__(self, device: InputDevice, rate: int, block_s: float, queue_s: float, reconnect_max_s: float,
                 on_status: Callable[[StatusEvent], None]) -> None:
        self.device, self.rate, self.block_s = device, rate, block_s
        self.reconnect_max_s, self.on_status = reconnect_max_s, on_status
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, int(queue_s / block_s)))
        self.overflows = 0
        self.dropped_blocks = 0
        self._dropped_s = 0.0  # audio dropped since the last block that made it into the queue
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
            self.queue.put_nowait((indata[:, 0].copy(), time.monotonic(), self._dropped_s))
            self._dropped_s = 0.0
        except queue.Full:
            self.dropped_blocks += 1
            self._dropped_s += frames / self.native_rate

    def _open(self) -> None:
        with _PORTAUDIO_LOCK:
            sd = portaudio()
            self.native_rate = self._choose_rate(sd)
            self.resampler = _Resampler(self.native_rate, self.rate)
            try:
                self.stream = sd.InputStream(device=self.device.index, channels=1, samplerate=self.native_rate,
                                             dtype="float32", blocksize=int(self.native_rate * self.block_s),
                                             callback=self._callback)
                self.stream.start()
            except Exception as exc:
                self._abandon()
                raise DeviceError(f"cannot open input device {self.device.index} '{self.device.name}': {exc}") from None
            _OPEN.add(self)
        self.name = f"{self.device.name} ({self.native_rate} Hz)"

    def _abandon(self) -> None:
        """Drop a stream that failed to start (it may hold the device half-open)."""
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception:  # it never ran; closing is best effort
                pass
        self.stream = None

    def _reopen(self) -> None:
        """Find the device again by name and open it.

        PortAudio lists devices once per initialisation, so a device that came back (perhaps
        under another index) is only seen after re-initialising it; but that closes every
        stream of the process, so it is done only when no other microphone is open. Otherwise
        the device is looked up in the list PortAudio already has, and the others keep running.
        """
        with _PORTAUDIO_LOCK:
            sd = portaudio()
            if not _OPEN - {self}:
                try:
                    sd._terminate()
                    sd._initialize()
                except Exception as exc:  # PortAudioError: no host API answers yet; try again later
                    raise DeviceError(f"cannot re-initialise PortAudio: {exc}") from None
            try:
                self.device = resolve(self.device.name)
            except DeviceError:
                raise
            except Exception as exc:  # PortAudioError while listing devices
                raise DeviceError(str(exc)) from None
            self._open()

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
                self._reopen()
                self.on_status(StatusEvent("listening", "input device back", {"device": self.name}))
                return True
            except DeviceError:
                delay = min(delay * 2, self.reconnect_max_s)
        return False

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        silence_limit = max(2.0, 10 * self.block_s)
        last = time.monotonic()  # when audio last arrived, or capture (re)started
        lost_since: float | None = None  # end of the last audio before the device was lost
        while not stop.is_set():
            try:
                samples, arrival, lost_s = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                if time.monotonic() - last > silence_limit:
                    self.on_status(StatusEvent("device-lost", f"no audio from '{self.device.name}' for "
                                                              f"{silence_limit:.0f} s", {"device": self.device.name}))
                    if lost_since is None:
                        lost_since = last
                    if not self._reconnect(stop):
                        return
                    last = time.monotonic()
                continue
            if lost_since is not None:  # the first block after a reconnect: the wall time in between is lost audio
                lost_s += max(0.0, arrival - samples.size / self.native_rate - lost_since)
                lost_since = None
            last = arrival
            yield Block(self.resampler(samples), arrival, lost_s)

    def close(self) -> None:
        with _PORTAUDIO_LOCK:
            _OPEN.discard(self)
            if self.stream is not None:
                try:
                    self.stream.stop()
                    self.stream.close()
                except Exception:  # a vanished device can fail to close; it is gone either way
                    pass
                self.stream = None


def _probe(path: Path) -> sf._SoundFileInfo:
    """The file's header, or an AudioError in one line: a bad file is refused at start, not midway."""
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt data
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"cannot decode {path}: {reason}") from None
    if info.frames <= 0:
        raise AudioError(f"{path} holds no audio samples")
    return info


class FileSource:
    """A recording replayed in real time (as a microphone would deliver it) or as fast as possible.

    The file is decoded block by block (downmixed and resampled on the fly), never whole: three
    hours of 48 kHz stereo would be gigabytes, and memory has to stay flat for any length.
    """

    def __init__(self, path: Path, rate: int, block_s: float, realtime: bool) -> None:
        self.path = Path(path)
        info = _probe(self.path)
        self.rate, self.block, self.realtime = rate, max(1, int(rate * block_s)), realtime
        self.file_rate = int(info.samplerate)
        self.name, self.native_rate = str(path), rate
        self.duration_s = info.frames / info.samplerate

    def _decoded(self, stop: threading.Event) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the model rate, read ``self.block`` (resampled) at a time."""
        frames = max(1, math.ceil(self.block * self.file_rate / self.rate))
        resampler = _Resampler(self.file_rate, self.rate)
        try:
            with sf.SoundFile(str(self.path)) as audio:
                while not stop.is_set():
                    chunk = audio.read(frames, dtype="float32", always_2d=True)
                    last = chunk.shape[0] < frames
                    samples = resampler(to_mono(chunk), last=last)
                    if samples.size:
                        yield samples
                    if last:
                        return
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioError(f"cannot decode {self.path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        start, sent = time.monotonic(), 0
        pending = np.zeros(0, np.float32)
        for samples in self._decoded(stop):
            pending = np.concatenate([pending, samples]) if pending.size else samples
            while pending.size >= self.block:
                block, pending = pending[: self.block], pending[self.block :]
                if not self._pace(stop, start, sent + block.size):
                    return
                sent += block.size
                yield Block(block, time.monotonic())
        if pending.size and self._pace(stop, start, sent + pending.size):
            yield Block(pending, time.monotonic())

    def _pace(self, stop: threading.Event, start: float, samples: int) -> bool:
        """In real time, wait until ``samples`` would have been heard; False when stopped."""
        if stop.is_set():
            return False
        if self.realtime:
            return not stop.wait(max(0.0, start + samples / self.rate - time.monotonic()))
        return True

    def close(self) -> None:
        pass


class StdinSource:
    """Raw little-endian 16-bit mono PCM on stdin (``--input -``) at ``[audio] stdin_rate``.

    stdin is polled with select(), never read blocking: an idle pipe must not keep a stopped
    daemon (SIGTERM) waiting for bytes that may never come.
    """

    def __init__(self, native_rate: int, rate: int, block_s: float) -> None:
        self.native_rate, self.rate = native_rate, rate
        self.bytes_per_block = 2 * max(1, int(native_rate * block_s))
        self.resampler = _Resampler(native_rate, rate)
        self.name = f"stdin ({native_rate} Hz PCM16)"

    def _read(self, fd: int, stop: threading.Event) -> Iterator[bytes]:
        """Whole blocks of bytes (the last one may be short), until EOF or ``stop``."""
        pending = b""
        while not stop.is_set():
            readable, _, _ = select.select([fd], [], [], POLL_S)
            if not readable:
                continue
            chunk = os.read(fd, self.bytes_per_block - len(pending))
            if not chunk:
                break
            pending += chunk
            if len(pending) >= self.bytes_per_block:
                yield pending
                pending = b""
        if pending and not stop.is_set():
            yield pending

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        pending = b""
        for chunk in self._read(sys.stdin.buffer.fileno(), stop):
            pending += chunk
            usable = len(pending) - len(pending) % 2
            if usable:
                yield Block(self.resampler(pcm16_to_float(pending[:usable])), time.monotonic())
                pending = pending[usable:]
        if stop.is_set():
            return
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

    def _decoded(self, stop: threading.Event) -> Iterator[np.ndarray]:
        """The demo is a few minutes of audio made in memory; it is replayed from there."""
        for offset in range(0, self.samples.size, self.block):
            yield self.samples[offset : offset + self.block]

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        while not stop.is_set():
            yield from super().blocks(stop)
