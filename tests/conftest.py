"""Shared fixtures: real speech from ../shared/data and one small model trained on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPKREC_SHARED_DATA", REPO.parent / "shared" / "data"))
LIBRI = SHARED_DATA / "librispeech-test-other"
TRAIN_SPEAKERS = ("1688", "1998", "2033")


def pytest_configure(config):
    if not LIBRI.is_dir():
        raise pytest.UsageError(f"real speech not found at {LIBRI}: set SPKREC_SHARED_DATA")


def spkrec(*args: str, env: dict | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the installed `spkrec` command as a user would."""
    exe = Path(sys.executable).with_name("spkrec")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"spkrec {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def speakers_dir(tmp_path_factory) -> Path:
    """A folder-per-speaker dataset of three real LibriSpeech voices (symlinks, nothing copied)."""
    root = tmp_path_factory.mktemp("speakers")
    for speaker in TRAIN_SPEAKERS:
        (root / speaker).symlink_to(LIBRI / speaker, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def trained_run(speakers_dir, tmp_path_factory) -> Path:
    """A small model fine-tuned from the shipped base model on real speech, via the real CLI.

    30 steps of 16 with all but the last stage frozen: a couple of minutes on two cores (the
    speech-shaped network costs four times ImageNet's per crop), and the three voices are told
    apart window by window from the start, since the base model already separates voices.
    """
    run_dir = tmp_path_factory.mktemp("run")
    spkrec("train", str(speakers_dir), "--out", str(run_dir), "--epochs", "1", "--min-steps", "30",
           "--steps-per-speaker", "0", "--batch-size", "16", "--freeze-layers", "4", "--seed", "0", check=True)
    return run_dir


@pytest.fixture(scope="session")
def base_model() -> Path:
    """The base model the package ships: what a user enrolls with, with no training.

    None of the LibriSpeech test-other voices was in its training, so every open-set test uses them.
    """
    from spkrec.models.base import base_model_path

    return base_model_path()


@pytest.fixture(scope="session")
def mic(tmp_path_factory):
    """The real audio path: a user-space PulseAudio whose null-sink monitor is the microphone."""
    from virtual_mic import VirtualMic

    vm = VirtualMic(tmp_path_factory.mktemp("pulse")).start()
    yield vm
    vm.stop()


# Open-set tests enroll test-other voices the shipped base model never heard: two enrolled, three
# impostors for calibration; the first six recordings of a voice enroll, the rest are tests.
# Calibration targets 2 % false accepts (three impostors give a few hundred non-target windows):
# a meeting must keep strangers off enrolled names, and the door still opens for a short visit.
SITE_ENROLLED = ("533", "3005")
IMPOSTORS = ("2609", "3080", "3331")
ENROLL_FILES = 6
SITE_FAR = 0.02


def speaker_files(speaker: str) -> list[Path]:
    return sorted((LIBRI / speaker).glob("*.flac"))


@pytest.fixture(scope="session")
def site(base_model, tmp_path_factory):
    """A gallery with two enrolled voices, calibrated against four impostors, via the real CLI."""
    root = tmp_path_factory.mktemp("site")
    config = root / "config.toml"
    config.write_text(f"[gallery]\npath = \"{root / 'gallery.sqlite'}\"\n")
    model = str(base_model)
    for name in SITE_ENROLLED:
        spkrec("enroll", name, "--input", *map(str, speaker_files(name)[:ENROLL_FILES]), "--model", model,
               "--config", str(config), check=True)
    calibrated = spkrec("calibrate", "--far", str(SITE_FAR), "--impostors", *(str(LIBRI / s) for s in IMPOSTORS), "--model", model,
                        "--config", str(config), check=True)
    return {"root": root, "config": config, "model": model, "gallery": root / "gallery.sqlite",
            "calibrate_output": calibrated.stdout + calibrated.stderr}


class Webhook:
    """A local HTTP server that records every POST, like a door controller's API."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/door"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def live_exe() -> str:
    return str(Path(sys.executable).with_name("spkrec-live"))


def play_to_daemon(mic, wav: Path, events: Path, *args: str) -> tuple[str, float]:
    """Start `spkrec-live --device pulse ARGS --no-ui --events EVENTS`, play WAV into the virtual
    microphone, stop it with SIGTERM. Returns (stderr, offset): stream time = file time + offset."""
    import conversation

    process = subprocess.Popen([live_exe(), "--device", "pulse", *args, "--no-ui", "--events", str(events)],
                               env={**os.environ, **mic.env}, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(events, '"listening"')
        listening = conversation.read_events(events)[0]["time"]
        time.sleep(0.5)  # the first callback comes a few hundred ms after the stream opens
        played = time.time()
        assert mic.play(wav).wait(300) == 0
        time.sleep(3.0)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return stderr, played - listening


def wait_for(path: Path, text: str, timeout: float = 60.0) -> None:
    """Block until ``text`` appears in the file at ``path`` (a daemon's event log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s")
