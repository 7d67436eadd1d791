"""Enrollment through the CLI: quality checks, the gallery commands, verify, identify with enrolled voices."""

import json

import numpy as np

from spkrec.models.gallery import Gallery

from conftest import LIBRI, spkrec

NEW_VOICE = "3005"  # not among the test model's training speakers
OTHER_VOICE = "367"


def _files(speaker):
    return sorted(str(p) for p in (LIBRI / speaker).glob("*.flac"))


def _setup(tmp_path, trained_run):
    config = tmp_path / "config.toml"
    config.write_text(f"[gallery]\npath = \"{tmp_path / 'gallery.sqlite'}\"\n[enroll]\nmin_voiced_s = 15.0\n")
    return ["--config", str(config), "--model", str(trained_run / "model.onnx")]


def test_enroll_verify_identify_remove(tmp_path, trained_run):
    args = _setup(tmp_path, trained_run)
    done = spkrec("enroll", "alice", "--input", *_files(NEW_VOICE)[:6], *args, check=True)
    assert done.stdout.startswith("enrolled alice:")
    listing = spkrec("speakers", args[0], args[1], check=True).stdout
    assert "alice" in listing

    held_out = _files(NEW_VOICE)[-1]
    same = spkrec("verify", "alice", held_out, *args)
    other = spkrec("verify", "alice", _files(OTHER_VOICE)[-1], *args)
    for done in (same, other):
        assert done.returncode in (0, 1) and done.stdout.split(":")[0] in ("accept", "reject")
        assert (done.returncode == 0) == done.stdout.startswith("accept")
    score = lambda done: float(done.stdout.split("score ")[1].split(",")[0])  # noqa: E731
    assert score(same) > score(other)

    result = json.loads(spkrec("identify", "--json", held_out, *args, check=True).stdout)
    assert "alice" in [name for name, _ in result["candidates"]]

    spkrec("speakers", "remove", "alice", args[0], args[1], check=True)
    assert "alice" not in spkrec("speakers", args[0], args[1], check=True).stdout


def test_enrollment_quality_checks_refuse_and_keep_the_gallery(tmp_path, trained_run):
    args = _setup(tmp_path, trained_run)
    spkrec("enroll", "alice", "--input", *_files(NEW_VOICE)[:6], *args, check=True)
    short = spkrec("enroll", "bob", "--input", _files(OTHER_VOICE)[0], *args)
    assert short.returncode == 2 and "enrollment refused: only" in short.stderr and "s needed" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1
    assert [s.name for s in Gallery(tmp_path / "gallery.sqlite").speakers()] == ["alice"]


def test_voices_of_another_model_are_skipped_with_a_warning(tmp_path, trained_run):
    args = _setup(tmp_path, trained_run)
    Gallery(tmp_path / "gallery.sqlite").add("mallory", "another-model", np.eye(1, 256, dtype=np.float32), 20.0)
    done = spkrec("identify", _files(NEW_VOICE)[0], *args)
    assert done.returncode == 0, done.stderr  # the model's own speakers are still recognised
    assert done.stderr.count("\n") == 1 and "mallory" in done.stderr and "re-enroll" in done.stderr
    verify = spkrec("verify", "mallory", _files(NEW_VOICE)[0], *args)
    assert verify.returncode == 2 and "enrolled with another model" in verify.stderr
    assert len(verify.stderr.strip().splitlines()) == 1


def test_export_import_between_galleries(tmp_path, trained_run):
    args = _setup(tmp_path, trained_run)
    spkrec("enroll", "alice", "--input", *_files(NEW_VOICE)[:6], *args, check=True)
    spkrec("speakers", "export", str(tmp_path / "g.json"), args[0], args[1], check=True)
    other = tmp_path / "other.toml"
    other.write_text(f"[gallery]\npath = \"{tmp_path / 'other.sqlite'}\"\n")
    done = spkrec("speakers", "import", str(tmp_path / "g.json"), "--config", str(other), check=True)
    assert "imported 1 speakers" in done.stdout
    assert Gallery(tmp_path / "other.sqlite").get("alice").windows == Gallery(tmp_path / "gallery.sqlite").get("alice").windows


def test_one_voice_across_sessions_is_enrolled_and_two_voices_are_refused(tmp_path, base_model):
    """The one-voice check splits the enrollment's windows in two and asks whether the parts agree
    like one voice. One voice from two sessions (three recordings as they are, three through
    another room and microphone) is enrolled: the old check (5th percentile of window agreement
    below the model's `consistency`) refused it at 0.33 < 0.38. Two voices in one enrollment
    (three recordings each) are refused: the old check let them through at 0.50."""
    import soundfile as sf

    from conversation import channel
    from spkrec.models.audio import load_audio

    config = tmp_path / "config.toml"
    config.write_text(f"[gallery]\npath = \"{tmp_path / 'gallery.sqlite'}\"\n")
    args = ["--config", str(config), "--model", str(base_model)]
    rng = np.random.default_rng(2)
    other_room = []
    for i, path in enumerate(_files("3080")[3:6]):
        out = tmp_path / f"other-room-{i}.wav"
        sf.write(out, channel(load_audio(path, 16000), rng), 16000)
        other_room.append(str(out))
    sessions = spkrec("enroll", "carol", "--input", *_files("3080")[:3], *other_room, *args)
    assert sessions.returncode == 0, sessions.stderr
    mixed = spkrec("enroll", "dave", "--input", *_files("2414")[:3], *_files("3080")[:3], *args)
    assert mixed.returncode == 2 and mixed.stderr.count("\n") == 1, mixed.stderr
    assert "sound like two voices" in mixed.stderr and "enroll one speaker at a time" in mixed.stderr
    assert [s.name for s in Gallery(tmp_path / "gallery.sqlite").speakers()] == ["carol"]
