"""Several inputs in one daemon: batched inference, per-stream labels, events and door policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import soundfile as sf

from spkrec.models.config import Config
from spkrec.models.engine import Engine

from conftest import live_exe, speaker_files, spkrec

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "benchmarks"))
from live_bench import make_stream  # noqa: E402  (the benchmark's stream builder is the daemon's own)

from spkrec.daemon.pipeline.run import Pipeline  # noqa: E402

CONFIG = """[inputs.front]
file = "{front}"
[inputs.front.door]
authorized = ["1688"]
command = ["{python}", "-c", "import sys, pathlib; pathlib.Path('{marker}').write_text(sys.stdin.read())"]

[inputs.back]
file = "{back}"
"""


def _longest(speaker: str):
    return max(speaker_files(speaker), key=lambda p: sf.info(str(p)).duration)


def _speaker_windows(events: list[dict], stream: str | None = None) -> list[tuple[float, str]]:
    return [(e["end"], e["label"]) for e in events if e["event"] == "speaker" and (stream is None or e["stream"] == stream)]


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_inputs(trained_run, tmp_path_factory):
    """The daemon serving two named file inputs from [inputs.*], one of them a door."""
    root = tmp_path_factory.mktemp("streams")
    front, back = _longest("1688"), _longest("2033")
    config = root / "config.toml"
    config.write_text(CONFIG.format(front=front, back=back, python=sys.executable, marker=root / "opened.json"))
    events = root / "events.jsonl"
    spkrec("live", "--model", str(trained_run / "model.onnx"), "--config", str(config), "--fast", "--no-ui",
           "--events", str(events), check=True)
    return {"root": root, "config": config, "front": front, "back": back, "events": _events(events),
            "model": str(trained_run / "model.onnx")}


def test_every_event_names_its_stream_and_each_stream_starts_and_stops(two_inputs):
    events = two_inputs["events"]
    assert {e.get("stream") for e in events} == {"front", "back"}
    for name in ("front", "back"):
        states = [e["state"] for e in events if e["event"] == "status" and e["stream"] == name]
        assert states[0] == "listening" and states[-1] == "stopped"


def test_each_stream_is_labelled_as_if_it_ran_alone(two_inputs, tmp_path):
    """Batching with another input and separate smoothing: the same labels, window for window,
    as a daemon serving that input alone (so no state leaks between streams)."""
    for name in ("front", "back"):
        alone = tmp_path / f"{name}.jsonl"
        spkrec("live", "--model", two_inputs["model"], "--config", str(two_inputs["config"]), "--input",
               str(two_inputs[name]), "--fast", "--no-ui", "--events", str(alone), check=True)
        together = _speaker_windows(two_inputs["events"], name)
        assert together == _speaker_windows(_events(alone)) and len(together) >= 8
    labels = {name: [label for _, label in _speaker_windows(two_inputs["events"], name)] for name in ("front", "back")}
    assert labels["front"].count("1688") > len(labels["front"]) / 2
    assert labels["back"].count("2033") > len(labels["back"]) / 2


def test_door_policy_is_per_stream(two_inputs):
    doors = [e for e in two_inputs["events"] if e["event"] == "door"]
    assert doors and {d["stream"] for d in doors} == {"front"}  # back has no [inputs.back.door]
    assert any(d["granted"] and d["label"] == "1688" for d in doors)
    opened = json.loads((two_inputs["root"] / "opened.json").read_text())
    assert opened["stream"] == "front" and opened["label"] == "1688"


def test_windows_due_at_the_same_hop_share_one_engine_call(trained_run, tmp_path):
    """Three inputs replayed in real time (6 s each): their windows fall due within one capture
    block of each other, and each hop's three go to the engine together."""
    engine = Engine(trained_run / "model.onnx", provider="cpu")
    cfg = Config()
    streams = []
    for speaker in ("1688", "1998", "2033"):
        audio, rate = sf.read(str(_longest(speaker)), dtype="float32")
        wav = tmp_path / f"{speaker}.wav"
        sf.write(str(wav), audio[: 6 * rate], rate)
        streams.append(make_stream(engine, cfg, wav, realtime=True, name=speaker))
    pipeline = Pipeline(streams, engine)
    pipeline.run(threading.Event())
    calls = sum(pipeline.batch_sizes.values())
    assert pipeline.batch_sizes.most_common(1)[0][0] == 3, pipeline.batch_sizes
    assert sum(n for size, n in pipeline.batch_sizes.items() if size == 3) >= calls * 0.7
    assert all(s.state.windows >= 6 for s in streams)


def test_repeated_flags_name_streams_and_meeting_mode_wants_one(trained_run, tmp_path):
    a, b = _longest("1688"), _longest("1998")
    done = spkrec("live", "--model", str(trained_run / "model.onnx"), "--input", f"left={a}", "--input", str(b),
                  "--fast", "--no-ui", "--events", "-", check=True)
    assert {json.loads(line)["stream"] for line in done.stdout.splitlines()} == {"left", b.stem}
    done = spkrec("live", "--model", str(trained_run / "model.onnx"), "--input", str(a), "--input", str(b),
                  "--meeting", "--fast", "--no-ui")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "one input" in done.stderr


def test_input_table_needs_a_device_or_a_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[inputs.front]\ndevice = "1"\nfile = "x.wav"\n')
    done = spkrec("live", "--config", str(config), "--no-ui")
    assert done.returncode == 2 and "inputs.front" in done.stderr and "Traceback" not in done.stderr


def test_event_reader_going_away_is_not_a_traceback(trained_run):
    """`--events - | head -1`: the pipe closes under the daemon, which finishes quietly."""
    daemon = subprocess.Popen([live_exe(), "--model", str(trained_run / "model.onnx"), "--input",
                               str(_longest("1688")), "--fast", "--no-ui", "--events", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = daemon.stdout.readline()
    daemon.stdout.close()
    _, err = daemon.communicate(timeout=120)
    assert json.loads(first)["event"] == "status"
    assert daemon.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_two_microphones_each_labelled_with_its_own_voice(trained_run, mic, tmp_path):
    """Two real (virtual) microphones, two voices at once: `--device front=pulse --device
    back=vmic2`, each stream labelled with the voice played into its own microphone."""
    sink2, env = mic.add_microphone("vmic2")
    wavs = {}
    for name, speaker in (("front", "1688"), ("back", "2033")):
        audio, rate = sf.read(str(_longest(speaker)), dtype="float32")
        wavs[name] = tmp_path / f"{name}.wav"
        sf.write(str(wavs[name]), audio[: 8 * rate], rate, subtype="PCM_16")
    config = tmp_path / "config.toml"
    config.write_text("")  # the model's own calibrated threshold
    events = tmp_path / "events.jsonl"
    daemon = subprocess.Popen([live_exe(), "--model", str(trained_run / "model.onnx"), "--config", str(config),
                               "--device", "front=pulse", "--device", "back=vmic2", "--no-ui", "--events", str(events)],
                              env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (not events.is_file() or events.read_text().count('"listening"') < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        players = [mic.play(wavs["front"]), mic.play(wavs["back"], sink=sink2)]
        assert all(p.wait(120) == 0 for p in players)
        time.sleep(2.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    found = _events(events)
    for name, speaker in (("front", "1688"), ("back", "2033")):
        labels = [label for _, label in _speaker_windows(found, name)]
        assert len(labels) >= 8 and labels.count(speaker) > len(labels) / 2, (name, labels)
