"""`spkrec speakers`: list, remove, export or import enrolled voices."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spkrec.models.config import Config

from .common import warning


def run(args: argparse.Namespace, cfg: Config) -> int:
    from spkrec.models.errors import GalleryError
    from spkrec.models.gallery import Gallery

    if args.action != "list" and not args.target:
        raise GalleryError(f"`spkrec speakers {args.action}` needs a {'NAME' if args.action == 'remove' else 'FILE'}")
    gallery = Gallery(cfg.gallery_path())
    if args.action == "remove":
        gallery.remove(args.target)
        print(f"removed {args.target}")
    elif args.action == "export":
        print(f"exported {gallery.export(Path(args.target))} speakers to {args.target}")
    elif args.action == "import":
        print(f"imported {gallery.import_(Path(args.target))} speakers from {args.target}")
    else:
        warn_if_readable(cfg.gallery_path())
        table = Table(title=f"enrolled speakers ({cfg.gallery_path()})")
        for column in ("name", "enrolled", "voiced", "windows", "quality", "model"):
            table.add_column(column)
        for s in gallery.speakers():
            table.add_row(s.name, s.enrolled, f"{s.voiced_s:.1f} s", str(s.windows), f"{s.quality:.2f}", s.fingerprint)
        Console().print(table)
    return 0


def warn_if_readable(path: Path) -> None:
    """Voiceprints are biometric data: say so when other users can read them (galleries made
    before spkrec created them owner-only, or copied in with a loose umask)."""
    from spkrec.models.private import readable_by_others

    loose = [str(p) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if readable_by_others(p)]
    if loose:
        warning(f"{path} can be read by other users (voiceprints are personal data): chmod 600 {' '.join(loose)}")
