"""The live pipeline under faults: one writer thread for the sinks, causal event order, audio that
never arrived, a lost microphone beside a working one, long files, and a stop with an idle stdin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import live_exe, speaker_files, wait_for
from spkrec.daemon.pipeline import devices, sources
from spkrec.daemon.pipeline.decisions import Decider, DeciderSettings
from spkrec.daemon.pipeline.events import DoorEvent, SpeakerEvent, StatusEvent
from spkrec.daemon.pipeline.run import Pipeline, Stream
from spkrec.daemon.pipeline.sources import Block, FileSource, MicrophoneSource
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.pipeline.vad import Vad
from spkrec.daemon.pipeline.windowing import Windower
from spkrec.models.errors import AudioError

RATE = 16000
BLOCK_S = 0.1


class FakeEngine:
    """Stands in for ONNX Runtime: a fixed embedding per window, so decisions are instant."""

    provider, path, source, precision, precision_note, last_ms = "fake", Path("fake.onnx"), Path("fake.onnx"), "fp32", "", 0.0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([1.0, 0.0], np.float32), (len(batch), 1))


class Recorder:
    """A sink that keeps what it was handed, and which thread handed it."""

    def __init__(self) -> None:
        self.events, self.threads = [], set()

    def handle(self, event) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())

    def close(self) -> None:
        pass


class ScriptedSource:
    """Blocks of loud noise (voiced), with ``lost_s`` where the script says audio was dropped, and a
    status from the reader thread on the way, as a microphone's reconnect would send it."""

    name, native_rate = "scripted", RATE

    def __init__(self, blocks: int, lost: dict[int, float], on_status=lambda e: None) -> None:
        self.count, self.lost, self.on_status = blocks, lost, on_status
        self.rng = np.random.default_rng(0)

    def blocks(self, stop):
        for i in range(self.count):
            if i == self.count // 2:
                self.on_status(StatusEvent("reconnecting", "from the reader thread"))
            yield Block((0.3 * self.rng.standard_normal(int(RATE * BLOCK_S))).astype(np.float32), time.monotonic(),
                        self.lost.get(i, 0.0))

    def close(self) -> None:
        pass


def _stream(source, name: str = "s") -> Stream:
    decider = Decider(lambda: (("a",), np.array([[1.0, 0.0]], np.float32)), DeciderSettings(0.5, 0.0, 1, 0.0))
    state = LiveState(source=source.name, rate=RATE, provider="fake", hop_s=0.5, timeline_s=10.0, name=name)
    return Stream(source, Vad(RATE, 10, 0), Windower(RATE, 2.0, 0.5), decider, state, name=name)


def test_a_sink_that_emits_is_heard_after_the_event_that_caused_it():
    """The door decides on a speaker event: every sink (and the event log last of all) sees the
    speaker event before the door decision it caused."""
    stream = _stream(ScriptedSource(0, {}))
    log = Recorder()

    class Door:
        def handle(self, event) -> None:
            if isinstance(event, SpeakerEvent):
                stream.emit(DoorEvent(event.label, True, event.score, "authorised", event.start, event.end, ()))

        def close(self) -> None:
            pass

    stream.sinks, stream.shared = [Door(), Recorder()], [log]
    stream.emit(SpeakerEvent(0.0, 2.0, "a", 0.9, (("a", 0.9),), 1.0))
    assert [type(e).__name__ for e in log.events] == ["SpeakerEvent", "DoorEvent"]
    assert [type(e).__name__ for e in stream.sinks[1].events] == ["SpeakerEvent", "DoorEvent"]
    assert {e.stream for e in log.events} == {"s"} and stream.state.door is not None


def test_only_the_pipeline_thread_writes_sinks_and_gaps_keep_stream_time_true():
    """A source that dropped 0.3 s and then lost 1.25 s: two ``gap`` events at the stream time
    where audio went missing, later windows shifted by it, and the reader thread's status
    delivered by the pipeline thread, in order, before "stopped"."""
    log = Recorder()
    source = ScriptedSource(60, {10: 0.3, 40: 1.25})
    stream = _stream(source)
    source.on_status = stream.emit  # as the daemon wires a microphone's status
    pipeline = Pipeline([stream], FakeEngine(), [log], batch_wait_s=0.0)
    pipeline.run(threading.Event())
    assert log.threads == {threading.get_ident()}
    gaps = [e for e in log.events if isinstance(e, StatusEvent) and e.state == "gap"]
    assert [(g.details["start"], g.details["lost_s"]) for g in gaps] == [(1.0, 0.3), (4.3, 1.25)]
    states = [e.state for e in log.events if isinstance(e, StatusEvent)]
    assert states == ["listening", "gap", "reconnecting", "gap", "stopped"]
    stopped = log.events[-1]
    assert stopped.details["stream_s"] == pytest.approx(6.0 + 1.55) and stopped.details["lost_s"] == 1.55
    ends = [e.end for e in log.events if isinstance(e, SpeakerEvent)]
    # windows every hop on the clock's grid, one (silent) window where the long gap ended, and the
    # last one at 7.5 s: 6 s heard + 1.55 s lost, not 6 s
    assert ends == pytest.approx([2.0, 2.5, 3.0, 3.5, 4.0, 5.55, 6.0, 6.5, 7.0, 7.5])
    assert stream.state.gaps == 2 and stream.state.status == "stopped"


def test_skip_returns_one_silent_window_however_long_the_gap():
    windower = Windower(RATE, 2.0, 0.5)
    assert windower.skip(RATE // 10, 0.0) == []  # nothing due yet
    windows = windower.skip(60 * RATE, 0.0)
    assert len(windows) == 1 and windows[0].end == pytest.approx(60.1) and windows[0].voiced_ratio == 0.0
    assert windower.next_due > windower.filled and (windower.next_due - windower.window) % windower.hop == 0


class FakeStream:
    def __init__(self, callback) -> None:
        self.callback, self.running = callback, True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.running = False

    def feed(self, frames: int = int(RATE * BLOCK_S)) -> None:
        self.callback(np.zeros((frames, 1), np.float32), frames, None, SimpleNamespace(input_overflow=False))


class FakePortAudio:
    """sounddevice as far as MicrophoneSource uses it; counts re-initialisations."""

    def __init__(self) -> None:
        self.resets, self.streams = 0, []

    def check_input_settings(self, **kw) -> None:
        pass

    def query_hostapis(self):
        return [{"name": "ALSA"}]

    def query_devices(self, kind=None):
        return [{"name": n, "max_input_channels": 1, "default_samplerate": RATE, "hostapi": 0} for n in ("a", "b")]

    def _terminate(self) -> None:
        self.resets += 1

    def _initialize(self) -> None:
        pass

    def InputStream(self, callback, **kw) -> FakeStream:
        self.streams.append(FakeStream(callback))
        return self.streams[-1]


@pytest.fixture
def fake_portaudio(monkeypatch):
    fake = FakePortAudio()
    monkeypatch.setattr(sources, "portaudio", lambda: fake)
    monkeypatch.setattr(devices, "portaudio", lambda: fake)
    yield fake
    for mic in list(sources._OPEN):
        mic.close()


def _mic(name: str, statuses: list, queue_s: float = 1.0) -> MicrophoneSource:
    return MicrophoneSource(devices.resolve(name), RATE, BLOCK_S, queue_s, 1.0, statuses.append)


def test_dropped_blocks_are_reported_with_the_next_block(fake_portaudio):
    mic = _mic("a", [], queue_s=0.2)  # room for two blocks
    for _ in range(5):
        fake_portaudio.streams[-1].feed()
    stop = threading.Event()
    blocks = mic.blocks(stop)
    assert [next(blocks).lost_s, next(blocks).lost_s] == [0.0, 0.0]
    fake_portaudio.streams[-1].feed()
    assert next(blocks).lost_s == pytest.approx(0.3) and mic.dropped_blocks == 3


def test_reconnecting_one_microphone_leaves_the_others_running(fake_portaudio):
    """PortAudio is re-initialised (which closes every stream) only when no other microphone is
    open; the lost one is found again by name in the current device list."""
    a_status, b_status = [], []
    a, b = _mic("a", a_status), _mic("b", b_status)
    a_stream = fake_portaudio.streams[0]
    assert b._reconnect(threading.Event())
    assert fake_portaudio.resets == 0 and a_stream.running and a.stream is a_stream
    assert [s.state for s in b_status] == ["reconnecting", "listening"] and sources.open_microphones() == 2
    a.close()
    assert b._reconnect(threading.Event()) and fake_portaudio.resets == 1  # alone: a fresh device list


def test_a_lost_device_is_counted_as_lost_audio_when_it_comes_back(fake_portaudio):
    statuses: list = []
    mic = _mic("a", statuses)
    got, stop = [], threading.Event()
    reader = threading.Thread(target=lambda: got.extend(mic.blocks(stop)))
    reader.start()
    try:
        fake_portaudio.streams[-1].feed()
        last_block = time.monotonic()
        deadline = time.monotonic() + 10
        while not any(s.state == "listening" for s in statuses) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        fake_portaudio.streams[-1].feed()
        back = time.monotonic()
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join(5)
    assert [s.state for s in statuses] == ["device-lost", "reconnecting", "listening"]
    assert len(got) == 2 and got[1].lost_s == pytest.approx(back - BLOCK_S - last_block, abs=0.1)


def test_long_files_stream_in_constant_memory(tmp_path):
    """Ten minutes of 48 kHz stereo (230 MB decoded as float32) go through in a few blocks' memory."""
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", 48000, 2, "PCM_16") as out:
        chunk = (0.1 * rng.standard_normal((48000 * 10, 2))).astype(np.float32)
        for _ in range(60):
            out.write(chunk)
    source = FileSource(path, RATE, BLOCK_S, realtime=False)
    assert source.duration_s == 600.0
    tracemalloc.start()
    try:
        total = sum(block.samples.size for block in source.blocks(threading.Event()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(total - 600 * RATE) < 100
    assert peak < 4_000_000, peak  # the decoded file would be 38 MB at 16 kHz mono, 230 MB as read


def test_a_corrupt_file_is_refused_at_start_in_one_line(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(AudioError) as caught:
        FileSource(bad, RATE, BLOCK_S, realtime=False)
    assert "cannot decode" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(AudioError, match="not found"):
        FileSource(tmp_path / "missing.wav", RATE, BLOCK_S, realtime=False)


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_listening(daemon: subprocess.Popen, events: Path, streams: int = 1, timeout: float = 60.0) -> None:
    """Until every stream says "listening"; a daemon that died meanwhile fails at once, with its stderr."""
    deadline = time.monotonic() + timeout
    while not events.is_file() or events.read_text().count('"listening"') < streams:
        if daemon.poll() is not None:
            raise AssertionError(f"the daemon exited ({daemon.returncode}): {daemon.stderr.read()}")
        assert time.monotonic() < deadline, f"no 'listening' within {timeout} s"
        time.sleep(0.1)


def test_sigterm_with_an_idle_stdin_stops_promptly(base_model, tmp_path):
    """Nothing ever arrives on stdin: SIGTERM still ends the daemon within a couple of seconds,
    and "stopped" is its last event."""
    config = tmp_path / "config.toml"
    config.write_text("")
    events = tmp_path / "events.jsonl"
    daemon = subprocess.Popen([live_exe(), "--model", str(base_model), "--config", str(config), "--input", "-",
                               "--no-ui", "--events", str(events)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        _wait_listening(daemon, events)
        time.sleep(0.3)
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, stderr
    assert took < 3.0, took
    assert _events(events)[-1]["state"] == "stopped"


def test_losing_one_microphone_does_not_interrupt_the_other(base_model, mic, tmp_path):
    """Two microphones; one's sound card goes away mid-stream and comes back. The other keeps
    delivering windows without a gap or a reconnect; the lost one says so and reconnects."""
    sink, env = mic.add_microphone("vmic3")
    audio, rate = sf.read(str(max(speaker_files("1688"), key=lambda p: sf.info(str(p)).duration)), dtype="float32")
    speech = tmp_path / "speech.wav"
    sf.write(str(speech), np.tile(audio, 3)[: 16 * rate], rate, subtype="PCM_16")
    config = tmp_path / "config.toml"
    config.write_text("[vad]\nmin_voiced_ratio = 0.0\n")  # every window scored: an event per hop, speech or not
    events = tmp_path / "events.jsonl"
    daemon = subprocess.Popen([live_exe(), "--model", str(base_model), "--config", str(config), "--device",
                               "a=pulse", "--device", "b=vmic3", "--no-ui", "--events", str(events)],
                              env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(daemon, events, streams=2)
        time.sleep(0.5)
        player = mic.play(speech)
        time.sleep(2.0)
        mic.unplug("vmic3")
        wait_for(events, '"reconnecting"', timeout=15)
        mic.replug("vmic3")
        wait_for(events, "input device back", timeout=15)
        assert player.wait(60) == 0
        time.sleep(1.0)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    found = _events(events)
    a_states = [e["state"] for e in found if e["event"] == "status" and e["stream"] == "a"]
    assert a_states == ["listening", "stopped"], a_states
    ends = [e["end"] for e in found if e["event"] == "speaker" and e["stream"] == "a"]
    assert len(ends) >= 20 and max(np.diff(ends)) < 0.75, ends  # one every hop, throughout the loss
    b_status = [e for e in found if e["event"] == "status" and e["stream"] == "b"]
    assert {"device-lost", "reconnecting", "gap"} <= {e["state"] for e in b_status}, b_status
    gap = next(e for e in b_status if e["state"] == "gap")
    back = [e["end"] for e in found if e["event"] == "speaker" and e["stream"] == "b" and e["start"] >= gap["end"]]
    assert len(back) >= 4, back  # it came back, and its stream time counts the time it was gone:
    # b's clock, with the gap counted, ends where a's does (-0.16 s on an idle machine, for 4.1 s
    # lost); uncounted, it would trail by the whole outage. Under a loaded CI run the two streams'
    # backlogs at SIGTERM differed by up to 1.3 s more, so the bound is half the outage.
    behind = a_stopped(found)["stream_s"] - b_status[-1]["stream_s"]
    assert gap["lost_s"] >= 2.0 and abs(behind) < 0.5 * gap["lost_s"], (behind, gap)


def a_stopped(found: list[dict]) -> dict:
    return next(e for e in found if e["event"] == "status" and e["state"] == "stopped" and e["stream"] == "a")
