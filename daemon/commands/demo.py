"""The demo for a machine with no microphone: enroll voices on screen, then label a conversation.

Four studio voices from Debian's Fish Fillets data, none of which the base model heard in
training. Three are enrolled on the fly from their training clips, through the same checks and
embedding path as ``spkrec enroll``, into a gallery of the demo's own (the user's gallery is
never touched); the fourth is left out, so the conversation of held-out clips that follows shows
a stranger as ``unknown``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console

from spkrec.daemon.commands import enroll
from spkrec.daemon.commands.democorpus import build_corpus
from spkrec.daemon.pipeline.sources import DemoSource
from spkrec.models.audio import load_audio
from spkrec.models.config import Config
from spkrec.models.engine import Engine
from spkrec.models.gallery import Gallery

STRANGER = "big-fish-nl"  # never enrolled: the demo's unknown voice


def _clips(manifest: Path) -> dict[str, list[Path]]:
    with manifest.open(newline="") as handle:
        rows = [(Path(r["path"]), r["label"]) for r in csv.DictReader(handle)]
    voices: dict[str, list[Path]] = {}
    for path, label in rows:
        voices.setdefault(label, []).append(path)
    return voices


def demo_gallery(engine: Engine, cfg: Config, console: Console) -> Gallery:
    """A fresh gallery with every demo voice but the stranger enrolled, each shown as it is added."""
    manifests = build_corpus(cfg.cache_dir())
    path = cfg.cache_dir() / "demo" / "gallery.sqlite"
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    gallery = Gallery(path)
    rate, info = engine.info.sample_rate, engine.info
    for label, files in sorted(_clips(manifests["enroll"]).items()):
        if label == STRANGER:
            continue
        sample = enroll.gather([load_audio(p, rate) for p in files], rate, cfg.vad)
        embeddings = enroll.embed(engine, sample)
        enroll.check(sample, embeddings, cfg.enroll, info.thresholds)
        speaker = gallery.add(label, info.fingerprint, embeddings, sample.voiced_s)
        console.print(f"demo: enrolled [bold]{label}[/] from {len(files)} clips "
                      f"({speaker.voiced_s:.0f} s voiced, {speaker.windows} windows, quality {speaker.quality:.2f})")
    console.print(f"demo: [bold]{STRANGER}[/] is not enrolled: their turns should read 'unknown'")
    return gallery


def demo_source(cfg: Config, rate: int) -> DemoSource:
    """The conversation: held-out clips of all four voices, the stranger's included."""
    return DemoSource(build_corpus(cfg.cache_dir())["heldout"], rate, cfg.audio.block_s)
