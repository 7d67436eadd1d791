"""Personal data stays the user's: voiceprints and event logs owner-only whatever the umask,
reserved names refused, a stale voiceprint skipped instead of fatal, tests kept out of the user's
own folders, and every failure at the edge one line, never a traceback."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spkrec.models.config import Config, find_config
from spkrec.models.gallery import Gallery

from conftest import ENROLL_FILES, SITE_ENROLLED, USER_FOLDERS, speaker_files, spkrec

VOICE = SITE_ENROLLED[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _config(root: Path, gallery: Path | str) -> Path:
    config = root / "config.toml"
    config.write_text(f"[gallery]\npath = \"{gallery}\"\n")
    return config


@pytest.fixture
def loose_umask():
    """The common default umask: files 0644 and folders 0755 unless the code asks for less."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def enrolled(base_model, tmp_path_factory):
    """One voice enrolled with the shipped model through the real CLI, under a 0o022 umask, into a
    gallery whose three folders spkrec itself creates."""
    root = tmp_path_factory.mktemp("privacy")
    gallery = root / "made" / "by" / "spkrec" / "gallery.sqlite"
    config = _config(root, gallery)
    old = os.umask(0o022)  # inherited by the `spkrec enroll` process
    try:
        spkrec("enroll", VOICE, "--input", *map(str, speaker_files(VOICE)[:ENROLL_FILES]), "--model", str(base_model),
               "--config", str(config), check=True)
    finally:
        os.umask(old)
    return {"root": root, "gallery": gallery, "config": config, "model": str(base_model)}


# ---------------------------------------------------------------------------------- owner-only files


def test_an_enrolled_gallery_and_the_folders_made_for_it_are_owner_only(enrolled, loose_umask):
    gallery = enrolled["gallery"]
    assert _mode(gallery) == 0o600
    for folder in (gallery.parent, gallery.parent.parent, gallery.parent.parent.parent):
        assert _mode(folder) == 0o700, folder
    reader = Gallery(gallery)  # SQLite makes -wal and -shm while a connection is open
    try:
        assert [s.name for s in reader.speakers()] == [VOICE]
        sidecars = [Path(f"{gallery}-{suffix}") for suffix in ("wal", "shm")]
        assert any(p.exists() for p in sidecars)
        for path in sidecars:
            if path.exists():
                assert _mode(path) == 0o600, path
    finally:
        reader.close()


def test_a_new_gallery_file_is_owner_only_in_process_too(tmp_path, loose_umask):
    path = tmp_path / "new" / "g.sqlite"
    gallery = Gallery(path)
    gallery.add("alice", "fp1", np.eye(2, 8, dtype=np.float32), 20.0)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert _mode(Path(f"{path}-wal")) == 0o600 and _mode(Path(f"{path}-shm")) == 0o600
    gallery.close()


def test_an_export_is_owner_only(enrolled, loose_umask):
    target = enrolled["root"] / "exports" / "gallery.json"
    done = spkrec("speakers", "export", str(target), "--config", str(enrolled["config"]), check=True)
    assert "exported 1 speakers" in done.stdout
    assert _mode(target) == 0o600 and _mode(target.parent) == 0o700
    assert not Path(f"{target}.partial").exists()


def test_the_events_file_is_owner_only(tmp_path, loose_umask):
    from spkrec.daemon.pipeline.events import StatusEvent
    from spkrec.daemon.pipeline.sinks import JsonlSink

    path = tmp_path / "logs" / "events.jsonl"
    sink = JsonlSink(str(path))
    sink.handle(StatusEvent("listening", "test"))
    sink.close()
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert json.loads(path.read_text())["state"] == "listening"


def test_speakers_warns_when_other_users_can_read_the_gallery(tmp_path):
    path = tmp_path / "g.sqlite"
    Gallery(path).add("alice", "fp1", np.eye(2, 8, dtype=np.float32), 20.0)
    config = _config(tmp_path, path)
    path.chmod(0o644)
    loose = spkrec("speakers", "--config", str(config), check=True)
    assert "alice" in loose.stdout
    warning = [line for line in loose.stderr.splitlines() if "other users" in line]
    assert len(warning) == 1 and f"chmod 600 {path}" in warning[0]
    path.chmod(0o600)
    assert "other users" not in spkrec("speakers", "--config", str(config), check=True).stderr


# ---------------------------------------------------------------------------------- reserved names


@pytest.mark.parametrize("name", ["unknown", "UNKNOWN", "Guest 2", "guest3"])
def test_enroll_refuses_a_reserved_name_and_stores_nothing(tmp_path, base_model, name):
    gallery = tmp_path / "g.sqlite"
    done = spkrec("enroll", name, "--input", str(speaker_files(VOICE)[0]), "--model", str(base_model),
                  "--config", str(_config(tmp_path, gallery)))
    assert done.returncode == 2 and "is reserved" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not gallery.exists()


def test_import_refuses_a_reserved_name_and_stores_nothing(tmp_path):
    export = tmp_path / "export.json"
    windows = np.eye(2, 8).tolist()
    export.write_text(json.dumps({"spkrec_gallery": 1, "speakers": [
        {"name": "alice", "fingerprint": "fp1", "voiced_s": 20.0, "enrolled": "now", "windows": windows},
        {"name": "Unknown", "fingerprint": "fp1", "voiced_s": 20.0, "enrolled": "now", "windows": windows}]}))
    gallery = tmp_path / "g.sqlite"
    done = spkrec("speakers", "import", str(export), "--config", str(_config(tmp_path, gallery)))
    assert done.returncode == 2 and "'Unknown' is reserved" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert Gallery(gallery).speakers() == []


# ---------------------------------------------------------------------------------- another model


def test_identify_skips_voices_of_another_model_and_says_so(enrolled, tmp_path):
    gallery = tmp_path / "g.sqlite"
    shutil.copy(enrolled["gallery"], gallery)  # the enroll process has closed it: no -wal to carry
    dim = Gallery(gallery).get(VOICE).voiceprint.size
    for name in ("mallory", "trent"):
        Gallery(gallery).add(name, "another-model", np.eye(2, dim, dtype=np.float32), 20.0)
    args = ["--model", enrolled["model"], "--config", str(_config(tmp_path, gallery))]
    held_out = str(speaker_files(VOICE)[-1])
    done = spkrec("identify", "--json", held_out, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == VOICE
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 voiceprint(s)" in lines[0] and "mallory, trent" in lines[0]
    assert "re-enroll" in lines[0]

    verify = spkrec("verify", "mallory", held_out, *args)
    assert verify.returncode == 2 and "'mallory' was enrolled with another model" in verify.stderr
    assert len(verify.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- the user's folders


def test_tests_use_their_own_config_data_and_cache_folders():
    """A user's gallery (say, enrolled with another model) or config must never change a test."""
    from spkrec.daemon.door.config import DoorConfig
    from spkrec.daemon.door.hook import audit_path

    cfg = Config()
    door_audit = audit_path(DoorConfig(authorized=["alice"], command=["true"]))  # a door's default audit log
    for path in (cfg.gallery_path(), cfg.cache_dir(), find_config(), door_audit):
        assert path.is_relative_to(USER_FOLDERS), path
    assert not str(USER_FOLDERS).startswith(str(Path.home() / ".local"))
    listing = spkrec("speakers", check=True, cwd=USER_FOLDERS)  # no --config: the lookup a user's shell would do
    assert str(USER_FOLDERS / "data" / "spkrec" / "gallery.sqlite") in listing.stdout.replace("\n", "")


# ---------------------------------------------------------------------------------- one line at the edge


@pytest.mark.parametrize("where", ["/proc/spkrec-test/g.sqlite", "{file}/g.sqlite"])
def test_a_gallery_folder_that_cannot_be_made_is_one_line(tmp_path, where):
    (tmp_path / "file").write_text("a file, not a folder")
    config = _config(tmp_path, where.format(file=tmp_path / "file"))
    done = spkrec("speakers", "--config", str(config))
    assert done.returncode == 2 and done.stderr.startswith("spkrec: error: cannot ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_events_file_that_cannot_be_written_stops_the_log_not_the_daemon(tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(f"[door]\nauthorized = [\"nobody-enrolled\"]\naudit_log = \"{audit}\"\n")
    longest = max(speaker_files(VOICE), key=lambda path: path.stat().st_size)  # enough windows for a decision
    # live mode: the door belongs to live streams (`spkrec label` runs none, tests/test_modes.py)
    done = spkrec("live", "--input", str(longest), "--fast", "--no-ui", "--events", "/dev/full", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "session summary" in done.stderr  # recognition went on to the end
    assert done.stderr.count("events are no longer written") == 1 and "Traceback" not in done.stderr
    decisions = [json.loads(line) for line in audit.read_text().splitlines()]
    assert decisions and decisions[0]["granted"] is False  # and the door went on deciding, on record


def test_the_events_sink_reports_a_failed_write_once(capsys):
    from spkrec.daemon.pipeline.events import StatusEvent
    from spkrec.daemon.pipeline.sinks import JsonlSink

    sink = JsonlSink("/dev/full")
    for _ in range(3):
        sink.handle(StatusEvent("listening", "test"))
    sink.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "events are no longer written" in err


def test_an_events_file_that_cannot_be_created_is_one_line(tmp_path):
    from spkrec.daemon.pipeline.sinks import JsonlSink
    from spkrec.models.errors import SpkrecError

    (tmp_path / "file").write_text("")
    with pytest.raises(SpkrecError, match="cannot write events"):
        JsonlSink(str(tmp_path / "file" / "events.jsonl"))


def test_a_helper_program_that_fails_is_one_line(monkeypatch, capsys):
    """apt-get, dpkg-deb or pip failing under `spkrec default-model --rebuild` or `weights`."""
    from spkrec.daemon import cli
    from spkrec.daemon.commands import devices

    def fails(args, cfg):
        raise subprocess.CalledProcessError(100, ["apt-get", "download", "klettres-data"],
                                            stderr=b"E: Unable to locate package klettres-data\n")

    monkeypatch.setattr(devices, "run", fails)
    assert cli.run(["devices"]) == 2
    err = capsys.readouterr().err
    assert err == "spkrec: error: `apt-get download klettres-data` failed: E: Unable to locate package klettres-data\n"


@pytest.mark.parametrize("says", ["No module named pip", "error: externally-managed-environment"])
def test_the_base_corpus_pip_call_without_a_usable_pip_is_a_warning(tmp_path, monkeypatch, says):
    """`default-model --rebuild` from a Python without pip (or a managed one) skips AMI in one line."""
    from spkrec.training import basecorpus

    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho '{says}' >&2\nexit 1\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    said = []
    assert basecorpus._pyannote_tests(tmp_path / "cache", said.append) is None
    assert len(said) == 1 and "AMI skipped" in said[0] and says in said[0]  # pip's own reason, not a guess
