"""Shared fixtures: real speech from ../shared/data and one small model trained on it.

Every test, in process and in every `spkrec` it starts, runs with config, data and cache folders
of this session's own (``USER_FOLDERS``): a user's gallery, config file or SPKREC_* variables
never change what a test sees, and no test writes into them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPKREC_SHARED_DATA", REPO.parent / "shared" / "data"))
LIBRI = SHARED_DATA / "librispeech-test-other"
TRAIN_SPEAKERS = ("1688", "1998", "2033")
# Downloaded once into the user's cache, public and only ever read (Debian's Fish Fillets voices
# for the demo, converted ImageNet weights): linked in, so the session needs no network for them.
CACHE_SEEDS = ("demo/fillets", "weights/resnet50-imagenet-keras.pt")


def _isolate_user_folders() -> Path:
    """Point XDG_CONFIG_HOME, XDG_DATA_HOME, XDG_CACHE_HOME, XDG_STATE_HOME (a door's default audit
    log) and SPKREC_CONFIG at a session folder.

    Set in os.environ at import, before any test or fixture runs, so `Config()` here and every
    `spkrec` subprocess (which inherits the environment) find the gallery, config and cache there.
    """
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spkrec"
    root = Path(tempfile.mkdtemp(prefix="spkrec-tests-"))
    for name in [k for k in os.environ if k.startswith("SPKREC_") and k != "SPKREC_SHARED_DATA"]:
        del os.environ[name]
    os.environ.update(XDG_CONFIG_HOME=str(root / "config"), XDG_DATA_HOME=str(root / "data"),
                      XDG_CACHE_HOME=str(root / "cache"), XDG_STATE_HOME=str(root / "state"))
    config = root / "config" / "spkrec" / "config.toml"  # the defaults; ~/.config/spkrec/config.toml is never read
    config.parent.mkdir(parents=True)
    config.write_text("# the test session's own config: the packaged defaults\n")
    os.environ["SPKREC_CONFIG"] = str(config)
    (root / "data").mkdir()
    _seed_cache(user_cache, root / "cache" / "spkrec")
    return root


def _seed_cache(user_cache: Path, cache: Path) -> None:
    """Link the downloaded, read-only parts of the user's cache into the session's (see CACHE_SEEDS)."""
    cache.mkdir(parents=True)
    for item in CACHE_SEEDS:
        found = user_cache / item
        complete = found.is_file() or (found / ".complete").is_file()  # a half-unpacked folder is fetched anew
        if complete:
            (cache / item).parent.mkdir(parents=True, exist_ok=True)
            (cache / item).symlink_to(found.resolve(), target_is_directory=found.is_dir())


USER_FOLDERS = _isolate_user_folders()


def pytest_configure(config):
    if not LIBRI.is_dir():
        raise pytest.UsageError(f"real speech not found at {LIBRI}: set SPKREC_SHARED_DATA")


def pytest_unconfigure(config):
    shutil.rmtree(USER_FOLDERS, ignore_errors=True)  # links are removed, never followed


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
    # calibrated with the door the access tests set up (its rule: who it opens for), so that door runs
    # at a threshold measured for it; the hook, webhook and audit log are not part of the rule
    with_door = root / "calibrate.toml"
    with_door.write_text(config.read_text() + f"[door]\nauthorized = [\"{SITE_ENROLLED[0]}\"]\n")
    calibrated = spkrec("calibrate", "--far", str(SITE_FAR), "--impostors", *(str(LIBRI / s) for s in IMPOSTORS),
                        "--model", model, "--config", str(with_door), check=True)
    return {"root": root, "config": config, "model": model, "gallery": root / "gallery.sqlite",
            "calibrate_output": calibrated.stdout + calibrated.stderr}


class Webhook:
    """A local HTTP(S) server that records every POST (body and headers), like a door controller's
    API; ``status`` is what it answers, ``tls`` an (certfile, keyfile) pair to serve https."""

    def __init__(self, status: int = 204, tls: tuple[Path, Path] | None = None) -> None:
        received = self.received = []
        headers = self.headers = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                headers.append({**dict(self.headers), "_body": body})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/door"

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
