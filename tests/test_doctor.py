"""`spkrec doctor`: every check on this install passes, and a real mismatched torchaudio build,
a damaged model, a broken config and foreign voiceprints are each named in one line with a fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import spkrec
from spkrec.models.base import SHA256, base_model_path
from spkrec.models.gallery import Gallery

TRAIN = ("torch", "torchaudio", "torchvision")


def _doctor(*args: str, env: dict | None = None) -> tuple[int, dict]:
    done = spkrec("doctor", "--json", *args, env=env)
    return done.returncode, json.loads(done.stdout)


def _by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_the_shipped_checksum_is_the_files():
    import hashlib

    assert hashlib.sha256(base_model_path().read_bytes()).hexdigest() == SHA256


def test_doctor_passes_on_this_install():
    code, report = _doctor()
    checks = _by_name(report)
    assert code == 0 and report["ok"], report
    for name in ("python", "core", "onnxruntime", "audio", "model", "config", "int8", "cache", "gallery dir",
                 "voiceprints", *TRAIN):
        assert name in checks, name
    assert all(c["status"] in ("ok", "warn", "skip") for c in checks.values())
    assert all(checks[name]["status"] == "ok" for name in TRAIN)  # the locked extra loads and runs
    assert "sha256 verified" in checks["model"]["detail"]
    assert checks["int8"]["status"] == "ok" and "agrees with fp32" in checks["int8"]["detail"]
    text = spkrec("doctor")
    assert text.returncode == 0 and text.stdout.splitlines()[-1].startswith("all checks passed")
    assert all(line[0] in "✓!-" for line in text.stdout.splitlines()[:-1])


@pytest.fixture(scope="module")
def mismatched_torchaudio(tmp_path_factory) -> Path:
    """torchaudio 2.11.1 (built against a newer torch than the pinned 2.11.0), the very build
    that broke fresh installs, in a folder put before site-packages."""
    root = tmp_path_factory.mktemp("mismatch")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root), "torchaudio==2.11.1"]
    done = subprocess.run(pip, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    return root


def test_a_mismatched_torchaudio_is_one_named_line(mismatched_torchaudio):
    env = {"PYTHONPATH": str(mismatched_torchaudio)}
    code, report = _doctor(env=env)
    checks = _by_name(report)
    assert code == 1 and not report["ok"]
    bad = checks["torchaudio"]
    assert bad["status"] == "fail" and bad["detail"].startswith("2.11.1: ")
    assert "libtorchaudio" in bad["detail"] and "another torch" in bad["detail"]
    assert bad["fix"].startswith("pip install 'torchaudio==2.11.0'")
    assert checks["torch"]["status"] == checks["torchvision"]["status"] == "ok"
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["torchaudio"]
    text = spkrec("doctor", env=env)
    lines = [line for line in text.stdout.splitlines() if line.startswith("✗")]
    assert text.returncode == 1 and len(lines) == 1 and "torchaudio" in lines[0] and "fix: pip install" in lines[0]
    # and the command that needs it says so in one line, no traceback
    train = spkrec("train", "/nonexistent", "--out", str(mismatched_torchaudio / "run"), env=env)
    assert train.returncode == 2 and len(train.stderr.splitlines()) == 1, train.stderr
    assert "cannot load torchaudio" in train.stderr and "spkrec doctor" in train.stderr


def test_a_broken_config_a_damaged_model_and_foreign_voiceprints(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nprovider = \"tpu\"\n")
    code, report = _doctor("--config", str(config))
    assert code == 1 and _by_name(report)["config"]["status"] == "fail"
    assert "model.provider" in _by_name(report)["config"]["detail"]

    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(base_model_path().read_bytes()[:1000])
    gallery = tmp_path / "gallery.sqlite"
    Gallery(gallery).add("alice", "0123456789abcdef", np.ones((2, 256), np.float32), 9.0)  # another model's
    config.write_text(f"[model]\npath = \"{damaged}\"\n[gallery]\npath = \"{gallery}\"\n")
    code, report = _doctor("--config", str(config))
    checks = _by_name(report)
    assert code == 1 and checks["model"]["status"] == "fail" and "not a loadable ONNX model" in checks["model"]["detail"]

    config.write_text(f"[gallery]\npath = \"{gallery}\"\n")
    code, report = _doctor("--config", str(config))
    checks = _by_name(report)
    assert code == 1 and checks["voiceprints"]["status"] == "fail"
    assert "1 of 1 made with another model: alice" in checks["voiceprints"]["detail"]
    assert "re-enroll" in checks["voiceprints"]["fix"]
