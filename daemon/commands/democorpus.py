"""The demo's voices: real speech from Debian packages, no hub download.

Four studio voices from the Fish Fillets game data (Debian main, GPL-2+): the small fish and
the big fish, each in Czech and Dutch. ``apt-get download`` + ``dpkg-deb -x`` unpack the data
into the cache without installing the game. Each voice's clips, in a fixed pseudo-random order,
give the demo its enrollment clips and, after them, the held-out clips of its conversation.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from spkrec.models.errors import DataError

PACKAGES = ("fillets-ng-data-cs", "fillets-ng-data-nl")
SOUND_ROOT = Path("usr/share/games/fillets-ng/sound")
# (label, language folder, character code in the file name)
VOICES = (("small-fish-cs", "cs", "m"), ("big-fish-cs", "cs", "v"),
          ("small-fish-nl", "nl", "m"), ("big-fish-nl", "nl", "v"))
ENROLL_CLIPS, HELDOUT_CLIPS = 12, 12  # about 40 s of speech a voice to enroll; 12 clips each to converse


def unpack_packages(cache_dir: Path) -> Path:
    """The unpacked Fish Fillets data folder, downloading and extracting it once."""
    root = cache_dir / "demo" / "fillets"
    marker = root / ".complete"
    if marker.is_file():
        return root / SOUND_ROOT
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError("the demo's voices need Debian's apt-get and dpkg-deb; without them run spkrec-live on a "
                        "microphone or --input FILE")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or len(debs) != len(PACKAGES):
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise DataError(f"apt-get download {' '.join(PACKAGES)} failed ({reason[-1] if reason else 'no output'}); "
                            "run `apt-get update` first")
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    marker.touch()
    return root / SOUND_ROOT


def _voice_files(sound_root: Path, language: str, code: str) -> list[Path]:
    files = sorted(sound_root.glob(f"*/{language}/*-{code}-*.ogg"))
    # A stable pseudo-random order, so each split mixes levels instead of taking the first ones.
    return sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())


def build_corpus(cache_dir: Path) -> dict[str, Path]:
    """CSV manifests ``enroll`` and ``heldout`` over the four demo voices."""
    sound_root = unpack_packages(cache_dir)
    out = cache_dir / "demo"
    splits: dict[str, list[tuple[Path, str]]] = {"enroll": [], "heldout": []}
    for label, language, code in VOICES:
        files = _voice_files(sound_root, language, code)
        need = ENROLL_CLIPS + HELDOUT_CLIPS
        if len(files) < need:
            raise DataError(f"demo voice {label}: found {len(files)} clips, need {need}")
        splits["enroll"] += [(f, label) for f in files[:ENROLL_CLIPS]]
        splits["heldout"] += [(f, label) for f in files[ENROLL_CLIPS:need]]
    manifests = {}
    for name, rows in splits.items():
        path = out / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            writer.writerows((str(p), label) for p, label in rows)
        manifests[name] = path
    return manifests
