"""Enrolled voices in a SQLite file: add, remove, list, export, import, and the live roster.

Every write is one transaction, and the database runs in WAL mode, so a crash mid-write leaves
the previous contents readable and the daemon can read while ``enroll`` writes. Each
voiceprint carries the fingerprint of the model that made it: scoring it with another model
would compare vectors from different spaces, so such voices are left out of the roster and named
(``foreign``) for the user to re-enroll, never scored silently.

Voiceprints are biometric personal data: the database (and SQLite's -wal and -shm files, which
take the database file's permissions) and every export are owner-only, whatever the umask.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GalleryError
from .private import touch_private, write_private
from .scoring import UNKNOWN, is_guest, mean_embedding

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    voiceprint BLOB NOT NULL,
    voiced_s REAL NOT NULL,
    quality REAL NOT NULL,
    enrolled TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL REFERENCES speakers(name) ON DELETE CASCADE,
    embedding BLOB NOT NULL
);
"""


# Labels the daemon gives voices nobody enrolled: a speaker enrolled under one of them could not be
# told from a stranger or a meeting guest (and a door rule for "Guest 1" would open for anyone).
def _reserved(name: str) -> bool:
    return name.lower() == UNKNOWN or is_guest(name)


def check_name(name: str) -> None:
    """Refuse a name that cannot be told apart in decisions, logs and RTTM files."""
    if not name or name != name.strip():
        raise GalleryError(f"speaker name {name!r} must be non-empty without leading or trailing spaces")
    if _reserved(name):
        raise GalleryError(f"speaker name {name!r} is reserved: spkrec labels strangers 'unknown' and meeting guests "
                           "'Guest N'; choose another name")


@dataclass(frozen=True)
class Speaker:
    name: str
    fingerprint: str
    voiceprint: np.ndarray
    voiced_s: float
    quality: float  # mean cosine of the enrollment windows to their voiceprint
    enrolled: str
    updated: str
    windows: int


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Gallery:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            touch_private(self.path)  # before SQLite: it creates -wal and -shm with the database file's mode
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=FULL")
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() is None:
                with self._transaction():  # a new file; an existing one is only read here
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self.db.execute(statement)
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path} is not a usable spkrec gallery: {exc}") from None
        if version != SCHEMA_VERSION:
            raise GalleryError(f"{self.path} has gallery schema {version}; this spkrec reads schema {SCHEMA_VERSION}")

    def _transaction(self):
        gallery = self

        class _Tx:
            def __enter__(self):
                gallery.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, tb):
                gallery.db.execute("COMMIT" if kind is None else "ROLLBACK")
                return False

        return _Tx()

    def close(self) -> None:
        self.db.close()

    def change_counter(self) -> int:
        """Changes when another connection commits: a cheap poll for the live roster."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def add(self, name: str, fingerprint: str, embeddings: np.ndarray, voiced_s: float) -> Speaker:
        """Enroll or extend ``name`` with window embeddings; the voiceprint is their normalised mean."""
        check_name(name)
        with self._transaction():
            self._add(name, fingerprint, np.asarray(embeddings, dtype=np.float32), voiced_s)
        return self.get(name)

    def _add(self, name: str, fingerprint: str, embeddings: np.ndarray, voiced_s: float) -> None:
        """The writes of ``add``, inside the caller's transaction (an import is one transaction)."""
        row = self.db.execute("SELECT fingerprint, voiced_s, enrolled FROM speakers WHERE name=?", (name,)).fetchone()
        if row is not None and row[0] != fingerprint:
            raise GalleryError(f"'{name}' was enrolled with another model ({row[0]}); "
                               f"remove and re-enroll: spkrec speakers remove {name}")
        stamp = _now()
        if row is None:
            self.db.execute("INSERT INTO speakers VALUES (?, ?, ?, 0, 0, ?, ?)",
                            (name, fingerprint, _blob(np.zeros(embeddings.shape[1])), stamp, stamp))
        self.db.executemany("INSERT INTO windows (name, embedding) VALUES (?, ?)",
                            [(name, _blob(e)) for e in embeddings])
        all_windows = np.stack([_vector(b) for (b,) in self.db.execute(
            "SELECT embedding FROM windows WHERE name=? ORDER BY id", (name,))])
        voiceprint = mean_embedding(all_windows)
        quality = float(np.mean(all_windows @ voiceprint))
        total = (row[1] if row else 0.0) + voiced_s
        self.db.execute("UPDATE speakers SET voiceprint=?, voiced_s=?, quality=?, updated=? WHERE name=?",
                        (_blob(voiceprint), total, quality, stamp, name))

    def get(self, name: str) -> Speaker:
        row = self.db.execute(
            "SELECT s.name, fingerprint, voiceprint, voiced_s, quality, enrolled, updated, COUNT(w.id) "
            "FROM speakers s LEFT JOIN windows w ON w.name = s.name WHERE s.name=? GROUP BY s.name", (name,)).fetchone()
        if row is None:
            raise GalleryError(f"no enrolled speaker named '{name}' (spkrec speakers lists them)")
        return Speaker(row[0], row[1], _vector(row[2]), row[3], row[4], row[5], row[6], row[7])

    def speakers(self) -> list[Speaker]:
        return [self.get(name) for (name,) in self.db.execute("SELECT name FROM speakers ORDER BY name")]

    def remove(self, name: str) -> None:
        with self._transaction():
            if self.db.execute("DELETE FROM speakers WHERE name=?", (name,)).rowcount == 0:
                raise GalleryError(f"no enrolled speaker named '{name}'")

    def windows(self, name: str) -> np.ndarray:
        return np.stack([_vector(b) for (b,) in self.db.execute("SELECT embedding FROM windows WHERE name=? ORDER BY id",
                                                                 (name,))])

    def roster(self, fingerprint: str) -> tuple[tuple[str, ...], np.ndarray]:
        """(names, voiceprints) of the voices enrolled with the model of ``fingerprint``.

        Voices of another model are left out, not an error: one stale voiceprint must not stop
        recognition of all the others. ``foreign`` names them, so callers can say so.
        """
        speakers = [s for s in self.speakers() if s.fingerprint == fingerprint]
        if not speakers:
            return (), np.zeros((0, 0), np.float32)
        return tuple(s.name for s in speakers), np.stack([s.voiceprint for s in speakers])

    def foreign(self, fingerprint: str) -> list[str]:
        """Names enrolled with another model than ``fingerprint``: skipped by ``roster``."""
        return [name for (name,) in self.db.execute("SELECT name FROM speakers WHERE fingerprint != ? ORDER BY name",
                                                     (fingerprint,))]

    def set_calibration(self, fingerprint: str, calibration: dict) -> None:
        """Store the operating point measured by ``spkrec calibrate`` for this gallery and model."""
        record = json.dumps({**calibration, "fingerprint": fingerprint, "calibrated": _now()})
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('calibration', ?)", (record,))

    def calibration(self, fingerprint: str | None = None) -> dict | None:
        """The stored calibration, or None when there is none (for the model of ``fingerprint``)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='calibration'").fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        if fingerprint is not None and record.get("fingerprint") != fingerprint:
            return None
        return record

    def export(self, path: Path) -> int:
        """Write every speaker (voiceprint and windows) to an owner-only JSON file for another machine."""
        data = [{"name": s.name, "fingerprint": s.fingerprint, "voiced_s": s.voiced_s, "enrolled": s.enrolled,
                 "windows": self.windows(s.name).tolist()} for s in self.speakers()]
        path = Path(path).expanduser()
        try:
            write_private(path, json.dumps({"spkrec_gallery": SCHEMA_VERSION, "speakers": data}))
        except OSError as exc:  # a full disk, a read-only folder: one line, not a traceback
            raise GalleryError(f"cannot write {path}: {exc.strerror}") from None
        return len(data)

    def import_(self, path: Path) -> int:
        """Add every speaker of an export in one transaction: a bad entry stores nothing."""
        try:
            data = json.loads(Path(path).read_text())
            speakers = [(s["name"], s["fingerprint"], np.asarray(s["windows"], np.float32), float(s["voiced_s"]))
                        for s in data["speakers"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GalleryError(f"{path} is not a spkrec gallery export ({exc})") from None
        for name, *_ in speakers:
            check_name(name)
        if any(windows.ndim != 2 or not len(windows) for _, _, windows, _ in speakers):
            raise GalleryError(f"{path} is not a spkrec gallery export (a speaker without windows)")
        with self._transaction():
            for speaker in speakers:
                self._add(*speaker)
        return len(speakers)
