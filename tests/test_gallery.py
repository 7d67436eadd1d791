"""The enrolled-speaker gallery: a real SQLite file, transactions, model fingerprints."""

import json
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from spkrec.models.errors import GalleryError
from spkrec.models.gallery import Gallery


def _emb(seed: int, n: int = 5, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim)
    e = base + 0.1 * rng.standard_normal((n, dim))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_enroll_extend_list_remove(tmp_path):
    g = Gallery(tmp_path / "g.sqlite")
    alice = g.add("alice", "fp1", _emb(0), 20.0)
    assert alice.windows == 5 and alice.voiced_s == 20.0 and 0.9 < alice.quality <= 1.0
    assert np.isclose(np.linalg.norm(alice.voiceprint), 1.0)
    more = g.add("alice", "fp1", _emb(0, n=3), 6.0)
    assert more.windows == 8 and more.voiced_s == 26.0 and more.enrolled == alice.enrolled
    g.add("bob", "fp1", _emb(1), 20.0)
    names, prints = g.roster("fp1")
    assert names == ("alice", "bob") and prints.shape == (2, 8)
    g.remove("bob")
    assert [s.name for s in Gallery(tmp_path / "g.sqlite").speakers()] == ["alice"]
    with pytest.raises(GalleryError, match="no enrolled speaker named 'bob'"):
        g.remove("bob")


def test_voiceprints_of_another_model_are_skipped_and_named_never_scored(tmp_path):
    g = Gallery(tmp_path / "g.sqlite")
    g.add("alice", "fp1", _emb(0), 20.0)
    g.add("bob", "fp2", _emb(1), 20.0)
    names, prints = g.roster("fp2")  # one stale voiceprint must not stop the others
    assert names == ("bob",) and np.allclose(prints[0], g.get("bob").voiceprint)
    assert g.foreign("fp2") == ["alice"] and g.foreign("fp1") == ["bob"] and g.foreign("fp3") == ["alice", "bob"]
    assert g.roster("fp3")[0] == ()
    with pytest.raises(GalleryError, match="another model"):
        g.add("alice", "fp2", _emb(0), 20.0)


@pytest.mark.parametrize("name", ["unknown", "Unknown", "UNKNOWN", "Guest 1", "guest 12", "GUEST3", "Guest_2",
                                  "guest-4", "", " alice"])
def test_reserved_and_malformed_names_are_refused(tmp_path, name):
    g = Gallery(tmp_path / "g.sqlite")
    with pytest.raises(GalleryError, match="reserved|non-empty"):
        g.add(name, "fp1", _emb(0), 20.0)
    assert g.speakers() == []


@pytest.mark.parametrize("name", ["unknownst", "guesthouse", "Guest Star", "Guest 1b", "alice"])
def test_names_like_reserved_ones_are_allowed(tmp_path, name):
    assert Gallery(tmp_path / "g.sqlite").add(name, "fp1", _emb(0), 20.0).name == name


def test_an_import_with_a_reserved_name_stores_nothing(tmp_path):
    g = Gallery(tmp_path / "a.sqlite")
    g.add("alice", "fp1", _emb(0), 20.0)
    g.export(tmp_path / "gallery.json")
    data = json.loads((tmp_path / "gallery.json").read_text())
    data["speakers"].append({**data["speakers"][0], "name": "Guest 1"})
    (tmp_path / "gallery.json").write_text(json.dumps(data))
    h = Gallery(tmp_path / "b.sqlite")
    with pytest.raises(GalleryError, match="'Guest 1' is reserved"):
        h.import_(tmp_path / "gallery.json")
    assert h.speakers() == []  # alice, before it in the file, was not stored either


def test_export_import_moves_a_gallery(tmp_path):
    g = Gallery(tmp_path / "a.sqlite")
    g.add("alice", "fp1", _emb(0), 20.0)
    g.add("bob", "fp1", _emb(1), 12.5)
    assert g.export(tmp_path / "gallery.json") == 2
    h = Gallery(tmp_path / "b.sqlite")
    assert h.import_(tmp_path / "gallery.json") == 2
    for name in ("alice", "bob"):
        assert np.allclose(h.get(name).voiceprint, g.get(name).voiceprint, atol=1e-6)


def test_a_writer_killed_mid_write_leaves_previous_contents(tmp_path):
    path = tmp_path / "g.sqlite"
    Gallery(path).add("alice", "fp1", _emb(0), 20.0)
    writer = (
        "import sys, numpy as np\n"
        "from spkrec.models.gallery import Gallery\n"
        f"g = Gallery({str(path)!r})\n"
        "g.db.execute('BEGIN IMMEDIATE')\n"
        "g.db.execute(\"INSERT INTO speakers VALUES ('mallory', 'fp1', x'00', 0, 0, 'now', 'now')\")\n"
        "g.db.execute('DELETE FROM windows')\n"
        "print('writing', flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    reader = Gallery(path)  # the daemon reads while enroll holds the write lock
    assert [s.name for s in reader.speakers()] == ["alice"]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    after = Gallery(path)
    assert [s.name for s in after.speakers()] == ["alice"] and after.get("alice").windows == 5
    after.add("bob", "fp1", _emb(1), 10.0)  # and the file is writable again


def test_readers_see_changes_without_reopening(tmp_path):
    path = tmp_path / "g.sqlite"
    reader, writer = Gallery(path), Gallery(path)
    before = reader.change_counter()
    writer.add("alice", "fp1", _emb(0), 20.0)
    assert reader.change_counter() != before
    assert reader.roster("fp1")[0] == ("alice",)


def test_a_file_that_is_not_a_gallery_is_a_clear_error(tmp_path):
    bogus = tmp_path / "g.sqlite"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryError, match="not a usable spkrec gallery"):
        Gallery(bogus)


def test_calibration_is_stored_per_model_and_survives_reopening(tmp_path):
    g = Gallery(tmp_path / "g.sqlite")
    assert g.calibration() is None
    g.set_calibration("fp1", {"threshold": 0.61, "target_far": 0.01})
    reopened = Gallery(tmp_path / "g.sqlite")
    assert reopened.calibration("fp1")["threshold"] == 0.61
    assert reopened.calibration("fp2") is None  # another model's threshold is never applied


def test_live_roster_picks_up_a_new_gallery_and_reports_a_broken_one(base_model, tmp_path):
    """The daemon starts before anyone is enrolled: the first enrollment creates the gallery and
    is recognised without a restart; a gallery that breaks later is reported once, not swallowed,
    and the voices read before keep being recognised."""
    from spkrec.daemon.pipeline.roster import Roster
    from spkrec.models.engine import Engine

    info = Engine(base_model, "cpu").info
    path = tmp_path / "later" / "gallery.sqlite"
    reported = []
    roster = Roster(info, path, trained_speakers=False, report=reported.append)
    assert roster()[0] == ()
    voice = np.random.default_rng(0).normal(size=(8, info.embedding_dim)).astype(np.float32)
    Gallery(path).add("alice", info.fingerprint, voice, 12.0)  # `spkrec enroll`, in another process
    assert roster()[0] == ("alice",)
    assert [e.state for e in reported] == ["gallery"]
    other = sqlite3.connect(str(path))  # another process damages it: no usable gallery any more
    other.execute("PRAGMA foreign_keys=OFF")
    other.execute("DROP TABLE speakers")
    other.commit()
    other.close()
    for _ in range(3):
        assert roster()[0] == ("alice",)
    errors = [e for e in reported if e.state == "error"]
    assert len(errors) == 1 and "gallery" in errors[0].message
