"""Benchmark: does the enrollment check know one voice across sessions from two voices in one recording?

`spkrec enroll` refuses an enrollment that does not sound like one voice. A user enrolls from
recordings made on different days, rooms and microphones; a mixture is two people in one
enrollment (a colleague answering, the wrong file). The check must pass the first and refuse
the second. Every enrollment here is 60 s (Fish Fillets) or 36 s (test-other) of voiced audio, embedded as enroll does (the voiced
audio of each recording, concatenated, in windows at the model's window and hop).

Single voices, refused = a false refusal:
- ``fillets``: the four Fish Fillets voices (acted, expressive Czech and Dutch game dialogue,
  recorded level by level): 2 or 3 levels ("sessions") per enrollment, equal shares, 12 draws
  per voice and session count;
- ``test-other sessions``: the ten LibriSpeech test-other voices, their recordings split into 2 or 3
  sessions, each session given its own channel (room reverberation RT60 0.2-0.7 s, a band limit,
  a gain, noise at 15-30 dB SNR), 6 draws per voice and session count;
- ``test-other one session``: the same voices, one clean session (the easy case).

Mixtures, accepted = a missed mixture: two voices of one corpus in one recording (the Fish Fillets
voices, or the clean test-other sessions: one room, one microphone), the second with a share of
50, 30 or 15 % of the speech.

Rules, each measured on the same enrollments:
- ``p5``: the 5th percentile of window . mean below the model's ``consistency`` (the check as it
  stood);
- ``split``: the windows split in two (models/clustering.py ``two_parts``, what enroll now
  does); refused when the smaller part holds at least ``share`` of the windows and the two centroids' cosine is below the model's
  ``cluster_centroid`` scale (the equal-error point between centroids of one voice and of two, the
  meeting clustering's own threshold);
- ``meeting``: the meeting clustering itself (models/clustering.cluster with the model's scales,
  parts under ``share`` of the speech folded): refused when it finds two speakers or more.

    .venv/bin/python tests/benchmarks/enroll_check_bench.py [--model M.onnx] [--out tests/benchmarks/results/enroll_check.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conversation import channel  # noqa: E402
from live_bench import machine  # noqa: E402

from spkrec.daemon.commands import enroll  # noqa: E402
from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.base import base_model_path  # noqa: E402
from spkrec.models.clustering import Scales, cluster, two_parts  # noqa: E402
from spkrec.models.config import Config  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.models.errors import AudioError  # noqa: E402
from spkrec.models.scoring import mean_embedding, normalize  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEST_OTHER = REPO.parent / "shared" / "data" / "librispeech-test-other"
# voiced seconds per enrollment: test-other voices have about a minute each in all
SECONDS = {"fillets": 60.0, "test-other sessions": 36.0, "test-other one session": 36.0}
SHARES = (0.5, 0.3, 0.15)
RATE = 16000


class Embedder:
    """Voiced audio of a session in, window embeddings out, as enroll does."""

    def __init__(self, engine: Engine, cfg: Config) -> None:
        self.engine, self.cfg = engine, cfg

    def __call__(self, recordings: list[np.ndarray]) -> np.ndarray:
        if not recordings:
            return np.zeros((0, self.engine.info.embedding_dim))
        sample = enroll.gather(recordings, RATE, self.cfg.vad)
        return enroll.embed(self.engine, sample) if sample.voiced.size else np.zeros((0, self.engine.info.embedding_dim))


def readable(path: Path) -> np.ndarray | None:
    """A clip's samples; None for the few empty clips the game ships."""
    try:
        return load_audio(path, RATE)
    except AudioError:
        return None


def windows_needed(seconds: float, info) -> int:
    return int(round((seconds - info.window_s) / info.hop_s)) + 1


def draw(sessions: list[np.ndarray], k: int, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """n windows, equal shares from k sessions drawn at random, consecutive within each."""
    per = [n // k + (i < n % k) for i in range(k)]
    long_enough = [s for s in sessions if len(s) >= per[0]]
    if len(long_enough) < k:
        return None
    parts = []
    for s, m in zip(rng.choice(len(long_enough), size=k, replace=False), per):
        e = long_enough[s]
        start = int(rng.integers(0, len(e) - m + 1))
        parts.append(e[start:start + m])
    return np.concatenate(parts)


def statistics(e: np.ndarray, scales: Scales, hop_s: float) -> dict[str, float]:
    e = normalize(e)
    minor, cosine = two_parts(e)
    found = {}
    for s in (0.1, 0.15, 0.2):
        labels = cluster(e, np.full(len(e), hop_s), scales, s * len(e) * hop_s)
        found[f"meeting_{s}"] = int(labels.max() + 1)
    return {"p5": float(np.percentile(e @ mean_embedding(e), 5)), "minor": minor, "cosine": cosine, **found}


def rules(thresholds: dict[str, float]) -> dict:
    consistency, centroid = thresholds["consistency"], thresholds["cluster_centroid"]
    out = {"p5 < consistency": lambda s: s["p5"] < consistency}
    for share in (0.1, 0.15, 0.2):
        out[f"split (share >= {share}, cosine < cluster_centroid)"] = (
            lambda s, share=share: s["minor"] >= share and s["cosine"] < centroid)
        out[f"meeting clustering (parts under {share} folded)"] = lambda s, share=share: s[f"meeting_{share}"] >= 2
    return out


def embed_corpora(engine: Engine, cfg: Config, cache: Path, store: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """{corpus: {voice: [window embeddings of each session]}}, kept in ``store`` (keyed by the
    model's fingerprint): embedding two and a half hours of clips takes a quarter of an hour here."""
    import pickle

    if store.is_file():
        return pickle.loads(store.read_bytes())
    embedder, rng = Embedder(engine, cfg), np.random.default_rng(0)
    corpora: dict[str, dict[str, list[np.ndarray]]] = {"fillets": {}, "test-other sessions": {},
                                                       "test-other one session": {}}
    for voice, files in sorted(fillets_voices(cache).items()):
        levels: dict[str, list[Path]] = {}
        for f in files:
            levels.setdefault(f.parent.parent.name, []).append(f)
        corpora["fillets"][voice] = [embedder([a for a in map(readable, fs) if a is not None]) for fs in levels.values()]
    for speaker in sorted(p for p in TEST_OTHER.iterdir() if p.is_dir()):
        audio = [load_audio(f, RATE) for f in sorted(speaker.glob("*.flac"))]
        corpora["test-other one session"][speaker.name] = [embedder(audio)]
        groups = [audio[i::3] for i in range(3)]
        corpora["test-other sessions"][speaker.name] = [embedder([channel(a, rng) for a in g]) for g in groups]
    store.write_bytes(pickle.dumps(corpora))
    return corpora


def trials(corpora: dict[str, dict[str, list[np.ndarray]]], info, scales: Scales) -> tuple[list[dict], list[dict]]:
    """Single-voice enrollments over sessions, and two-voice mixtures within one session's channel."""
    rng = np.random.default_rng(1)
    singles, mixtures = [], []
    for corpus, voices in corpora.items():
        n = windows_needed(SECONDS[corpus], info)
        for voice, sessions in voices.items():
            for k in ((1,) if corpus == "test-other one session" else (2, 3)):
                for _ in range(12 if corpus == "fillets" else 6):
                    e = draw(sessions, k, n, rng)
                    if e is not None:
                        singles.append({"corpus": corpus, "voice": voice, "sessions": k,
                                        **statistics(e, scales, info.hop_s)})
        if corpus == "test-other sessions":
            continue  # a mixture is two people in one recording: one room, one microphone
        for a, b in itertools.permutations(sorted(voices), 2):
            for share in SHARES:
                m = int(round(n * share))
                first, second = draw(voices[a], 1, n - m, rng), draw(voices[b], 1, m, rng)
                if first is not None and second is not None:
                    mixtures.append({"corpus": corpus, "voices": [a, b], "share": share,
                                     **statistics(np.concatenate([first, second]), scales, info.hop_s)})
    return singles, mixtures


def rates(refuses, singles: list[dict], mixtures: list[dict]) -> dict[str, dict]:
    row = {}
    for corpus in sorted({s["corpus"] for s in singles}):
        got = [refuses(s) for s in singles if s["corpus"] == corpus]
        row[f"false refusals, {corpus}"] = {"rate": round(float(np.mean(got)), 4), "n": len(got)}
    for share in SHARES:
        got = [refuses(s) for s in mixtures if s["share"] == share]
        row[f"mixtures refused, second voice {share:.0%}"] = {"rate": round(float(np.mean(got)), 4), "n": len(got)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "tests/benchmarks/results/enroll_check.json")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "spkrec", help="the demo corpus's cache")
    args = parser.parse_args()
    started = time.time()
    model = args.model or base_model_path()
    engine, cfg = Engine(model, "cpu"), Config()
    info = engine.info
    corpora = embed_corpora(engine, cfg, args.cache, Path(f"/tmp/enroll-check-{info.fingerprint}.pkl"))
    print({c: {v: sum(map(len, ss)) for v, ss in voices.items()} for c, voices in corpora.items()}, flush=True)
    singles, mixtures = trials(corpora, info, Scales.of(info.thresholds))
    table = {}
    for name, refuses in rules(info.thresholds).items():
        table[name] = rates(refuses, singles, mixtures)
        print(name, json.dumps({k: v["rate"] for k, v in table[name].items()}), flush=True)
    sweep = {}  # the split rule's cosine bar, the smaller part at 10 % or more (enroll.MIN_PART)
    for bar in np.round(np.arange(0.30, 0.61, 0.02), 2):
        sweep[f"{bar:.2f}"] = {k: v["rate"] for k, v in rates(
            lambda s, bar=bar: s["minor"] >= 0.1 and s["cosine"] < bar, singles, mixtures).items()}
    result = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "model": str(model), "fingerprint": info.fingerprint,
              "thresholds": {k: round(info.thresholds[k], 4) for k in ("consistency", "cluster_centroid")},
              "enrollment_s": SECONDS, "rules": table, "split_sweep_minor_0.1": sweep,
              "singles": singles, "mixtures": mixtures, "wall_s": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


def fillets_voices(cache: Path) -> dict[str, list[Path]]:
    """The four Fish Fillets voices' clips (the demo corpus, unpacked into the cache)."""
    from spkrec.daemon.commands.democorpus import VOICES, _voice_files, unpack_packages

    root = unpack_packages(cache)
    return {name: _voice_files(root, language, code) for name, language, code in VOICES}


if __name__ == "__main__":
    main()
