"""Files that hold personal data: voiceprints, audit trails, who spoke when.

Every such file is created owner-only (0600) in owner-only folders (0700), whatever the
process umask, because a voiceprint is biometric data and an audit log says who came and went.
Folders that already exist are left as they are (``/tmp``, a home directory), only the ones we
create are made private.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from .errors import SpkrecError

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents owner-only; one clear error when it cannot be made."""
    path = Path(path).expanduser()
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise SpkrecError(f"cannot create folder {path}: {exc.strerror}") from None
    return path


def touch_private(path: Path) -> Path:
    """Make sure ``path`` exists as an owner-only file (in private folders), keeping its content."""
    path = Path(path).expanduser()
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE))
    except OSError as exc:
        raise SpkrecError(f"cannot write {path}: {exc.strerror}") from None
    return path


def open_private(path: Path, mode: str = "a") -> IO[str]:
    """Open a text file for writing (``"a"`` or ``"w"``), created 0600 if it is new."""
    path = Path(path).expanduser()
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        raise SpkrecError(f"cannot write {path}: {exc.strerror}") from None
    return os.fdopen(fd, mode, encoding="utf-8")


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``: a crash leaves the old file or the new, both 0600."""
    path = Path(path).expanduser()
    partial = path.with_name(path.name + ".partial")
    with open_private(partial, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def readable_by_others(path: Path) -> bool:
    """True when a group or other user can read the file."""
    try:
        return bool(Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False
