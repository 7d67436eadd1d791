"""The shipped base model: it loads, it is the model the README's card describes, and it
recognises a voice it never heard, enrolled from files, through the real virtual microphone,
while a stranger stays ``unknown``. A core-only install (no torch) uses it at once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import conversation
import pytest
from conftest import LIBRI, REPO, play_to_daemon, speaker_files, spkrec

from spkrec.models.base import base_model_path
from spkrec.models.engine import Engine

ENROLLED, STRANGER = "1998", "3005"  # test-other voices: never in the base model's training


def _card() -> dict[str, str]:
    """The README's model card rows (| key | value |) under '## The base model'."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The base model", 1)[1].split("\n## ", 1)[0]
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r"^\| ([^|]+) \| ([^|]+) \|$", section, re.M)}


def test_shipped_model_loads_and_matches_its_card():
    path = base_model_path()
    assert path.stat().st_size <= 50_000_000
    engine = Engine(path, provider="cpu")
    info, card = engine.info, _card()
    assert card["fingerprint"] == f"`{info.fingerprint}`"
    assert card["window / hop"] == f"{info.window_s:g} s / {info.hop_s:g} s at {info.sample_rate} Hz"
    assert info.labels == () and info.prototypes.shape == (0, info.embedding_dim)
    for key in ("eer", "far1", "consistency"):
        assert f"{key} {info.thresholds[key]:.3f}" in card["thresholds"]
    data = info.training["data"]
    assert f"{sum(o['voices'] for o in data.values())} voices" in card["training voices"]
    # LibriSpeech test-other is how unseen-voice quality is measured: none of it was trained on
    held_out = set(info.training["held_out_voices"])
    assert all(label.startswith("libri-") for label in held_out)
    assert not {f"libri-{d.name}" for d in LIBRI.iterdir() if d.is_dir()} & held_out
    emb = engine.embed(conversation.load_audio(speaker_files(ENROLLED)[0], 16000)[None, :32000])
    assert emb.shape == (1, info.embedding_dim) and abs(float((emb ** 2).sum()) - 1.0) < 1e-4


def test_default_model_command_shows_the_shipped_model():
    done = spkrec("default-model", check=True)
    assert done.stdout.strip().splitlines()[-1] == str(base_model_path())
    assert Engine(base_model_path(), provider="cpu").info.fingerprint in done.stdout


def test_unseen_voice_enrolled_from_files_is_recognised_through_the_microphone(mic, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f"[gallery]\npath = \"{tmp_path / 'gallery.sqlite'}\"\n")
    done = spkrec("enroll", ENROLLED, "--input", *map(str, speaker_files(ENROLLED)[:6]), "--config", str(config),
                  check=True)  # no --model: the shipped one
    assert done.stdout.startswith(f"enrolled {ENROLLED}")
    order = [(p, who) for who in (ENROLLED, STRANGER) for p in speaker_files(who)[6:8]]
    wav = tmp_path / "visit.wav"
    turns = conversation.assemble(order, wav, gap_s=3.0)
    events = tmp_path / "events.jsonl"
    _, offset = play_to_daemon(mic, wav, events, "--config", str(config))
    got = conversation.read_events(events)
    assert got[0]["model"] == str(base_model_path())
    labels = conversation.turn_labels(got, turns, offset)
    assert labels == [ENROLLED, ENROLLED, "unknown", "unknown"], labels
    right, total = conversation.speaker_agreement(got, [t for t in turns if t[2] == ENROLLED], offset)
    assert total >= 10 and right / total >= 0.8, (right, total)
    stranger = [e for e in got if e["event"] == "speaker" and e["start"] - offset >= turns[2][0] - 0.3]
    assert stranger and sum(e["label"] == ENROLLED for e in stranger) / len(stranger) <= 0.2


def test_core_install_without_torch_identifies_a_file_at_once(tmp_path):
    """The wheel installed with its core dependencies only, into a fresh environment with empty
    caches: `spkrec enroll` and `spkrec identify` work on the shipped model, torch is absent."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source_copy(tmp_path))], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", *map(str, wheels.glob("*.whl"))],
                               capture_output=True, text=True)
    if installed.returncode != 0 and "Could not find a version" in installed.stderr:
        pytest.skip(f"no package index reachable for the core dependencies: {installed.stderr.strip()[-200:]}")
    assert installed.returncode == 0, installed.stderr
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("SPKREC_CONFIG", None)
    exe = venv / "bin" / "spkrec"
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path)
    enrolled = subprocess.run([str(exe), "enroll", ENROLLED, "--input", *map(str, speaker_files(ENROLLED)[:6])], **run)
    assert enrolled.returncode == 0, enrolled.stderr
    start = time.monotonic()
    done = subprocess.run([str(exe), "identify", str(speaker_files(ENROLLED)[-1]), str(speaker_files(STRANGER)[-1])],
                          **run)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 60  # no model to build or download: seconds
    rows = [line for line in done.stdout.splitlines() if ".flac" in line]
    assert ENROLLED in rows[0] and "unknown" in rows[1], done.stdout
    assert not (tmp_path / "cache" / "spkrec" / "models").exists()  # nothing was built
    _operators_commands_work(venv / "bin", run)


def _operators_commands_work(bin_dir, run: dict) -> None:
    """What a service install needs from the package beyond the model: both entry points, the
    packaged unit files pointing at this install, the configuration lookup."""
    from spkrec.models import __version__

    for exe in ("spkrec", "spkrec-live"):
        version = subprocess.run([str(bin_dir / exe), "--version"], **run)
        assert version.returncode == 0 and version.stdout.strip() == f"spkrec {__version__}", version
    unit = subprocess.run([str(bin_dir / "spkrec"), "systemd-unit"], **run)
    assert unit.returncode == 0 and f"ExecStart={bin_dir / 'spkrec-live'} --no-ui" in unit.stdout, unit.stderr
    config = subprocess.run([str(bin_dir / "spkrec"), "config"], **run)
    assert config.returncode == 0 and "(no config file found)" in config.stdout, config.stderr
    for section in ("[door]", "[log]", "[meeting]", "[metrics]", "[train.augment]"):  # the parts' registrations
        assert section in config.stdout, config.stdout


def source_copy(tmp_path):
    """The tracked files in a folder of their own: a build writes its egg-info and build/ beside
    the sources, and an egg-info left in the repository would shadow the installed metadata
    (entry points) of every command later started from the repository's root."""
    copy = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True)
    if tracked.returncode != 0:  # not a git checkout: everything but what builds and runs leave
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
        return copy
    for name in filter(None, tracked.stdout.decode().split("\0")):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, copy / name)
    return copy


def test_pipx_install_gives_both_commands(tmp_path):
    """`pipx install` of the source folder (a non-editable build, as `pip install .` does) into
    pipx's own venv: both commands on PATH, the shipped model inside, no torch."""
    tools = tmp_path / "tools"
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    got = subprocess.run([str(tools / "bin" / "python"), "-m", "pip", "install", "-q", "pipx"], capture_output=True,
                         text=True)
    if got.returncode != 0 and "Could not find a version" in got.stderr:
        pytest.skip(f"no package index reachable for pipx: {got.stderr.strip()[-200:]}")
    assert got.returncode == 0, got.stderr
    bin_dir = tmp_path / "bin"
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(bin_dir),
           "PIPX_MAN_DIR": str(tmp_path / "man"), "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("SPKREC_CONFIG", None)
    env.pop("VIRTUAL_ENV", None)
    installed = subprocess.run([str(tools / "bin" / "pipx"), "install", str(source_copy(tmp_path))],
                               capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path)
    venv_python = tmp_path / "pipx" / "venvs" / "spkrec" / "bin" / "python"
    assert subprocess.run([str(venv_python), "-c", "import torch"], capture_output=True).returncode != 0
    model = subprocess.run([str(venv_python), "-c", "from spkrec.models.base import base_model_path as p; print(p())"],
                           **run)
    assert model.returncode == 0 and "site-packages" in model.stdout  # the installed copy, not this checkout
    done = subprocess.run([str(bin_dir / "spkrec"), "identify", str(speaker_files(STRANGER)[-1])], **run)
    assert done.returncode == 0 and "unknown" in done.stdout, done.stderr
    _operators_commands_work(bin_dir, run)
