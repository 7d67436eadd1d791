"""Build the base training corpus: every real, licence-compatible, reliably-labelled voice, packed small.

The GPU machine that trains the general speaker encoder can only be reached by carrying a few tens
of MiB per call, so this module gathers all usable voices and packs them into ONE folder of Ogg Opus
files (one per speaker, 16 kHz mono, ~24 kbit/s) plus an ``index.json`` that records where each voice
came from and under which licence, so the derived weights stay redistributable.

Sources and why they are labelled the way they are:

* ``libri-<id>``: LibriSpeech train-clean-100 (CC BY 4.0), one utterance per speaker.
* ``fsdd-<name>``: Free Spoken Digit Dataset (CC BY-SA 4.0), 8 kHz digits, resampled.
* ``klettres-<lang>[-<folder>]``: KLettres letter/syllable readings (GPL-2+). A language becomes one
  identity only where the files themselves say both folders are one person (same ``artist`` tag, or
  the same recording dates); otherwise only the larger folder is used, so one person can never carry
  two labels. Minority-format files in a folder (other sample rate / channel count: likely a later
  re-recording, maybe by someone else) and folders credited to several people are left out.
* ``hedgewars-<pack>``: Hedgewars voice packs (Data/Sounds: GFDL-1.3 per Debian copyright). Upstream
  CREDITS name one voice actor for the English voices, and Classic/HillBilly share files with Default,
  so the English character packs are most likely one person acting: only ``Default`` is kept from them.
  ``Robot`` is processed; ``Russian_pl`` shares files with ``Default_pl`` (same contributor). Any file
  found byte-identical in two packs is dropped everywhere.
* ``ami-<id>``: AMI excerpts from pyannote.audio's test data (MIT), cut by RTTM into single-speaker
  turns; test-meeting speakers are excluded (they stay unseen for the meeting tests).

Never used here: LibriSpeech test-other (the unseen test set; it can be packed apart with
``--test-out``), Fish Fillets (reserved demo voices) and any synthetic voice.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf
import soxr

from spkrec.models.errors import DataError

Log = Callable[[str], None]

SAMPLE_RATE = 16000
MIN_SEGMENT_S = 0.5
GAP_S = 0.05  # silence between concatenated pieces, so crops rarely splice two clips mid-word
PEAK = 0.95
CREATED_BY = "spkrec training.basecorpus"

LICENCE_LIBRI = "CC-BY-4.0"
LICENCE_FSDD = "CC-BY-SA-4.0"
LICENCE_KLETTRES = "GPL-2+"
LICENCE_HEDGEWARS = "GFDL-1.3"
LICENCE_AMI = "MIT (pyannote.audio tests; AMI corpus CC-BY-4.0)"

# Hedgewars packs kept, see module docstring for why the others are not.
HEDGEWARS_PACKS = ("Default", "Default_es", "Default_pl", "Default_ru", "Default_uk")
# KLettres languages whose files name several people for one folder (nb: "Johnstad/Gabor").
KLETTRES_SKIP = {"nb": "credited to two people (Johnstad/Gabor) in the Vorbis tags"}
PYANNOTE_VERSIONS = ("", "==3.3.2", "==3.1.1")  # "" = newest; older ones as fallbacks


@dataclass(frozen=True)
class Piece:
    """A stretch of one file spoken by one person; ``end_s`` None means to the end of the file."""

    path: Path
    start_s: float = 0.0
    end_s: float | None = None


@dataclass
class Source:
    """One speaker identity and everything we may train on for it."""

    label: str
    origin: str
    licence: str
    pieces: list[Piece] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """The distinct files this speaker's pieces come from."""
        return sorted({p.path for p in self.pieces})


# ----------------------------------------------------------------------------------------- helpers


def _readable(path: Path, log: Log) -> bool:
    """True if libsndfile can open the file; unreadable files are skipped with a warning."""
    try:
        info = sf.info(str(path))
        return info.frames > 0
    except Exception as exc:  # noqa: BLE001 - any decoder error means "skip this file"
        log(f"warning: skipping unreadable {path}: {exc}")
        return False


def _whole_files(paths: Iterable[Path], log: Log) -> list[Piece]:
    return [Piece(p) for p in sorted(paths) if _readable(p, log)]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _shared_contents(groups: dict[str, list[Path]]) -> set[str]:
    """Hashes of files that occur (byte-identical) in more than one group: their speaker is unclear."""
    owners: dict[str, set[str]] = defaultdict(set)
    for name, paths in groups.items():
        for p in paths:
            owners[_md5(p)].add(name)
    return {h for h, names in owners.items() if len(names) > 1}


def _ascii_id(text: str) -> str:
    """Fold accents and odd characters (pyannote's test data spells MEO069 as MÉO069 on purpose)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", folded).strip("-")


def _apt_extract(package: str, cache_dir: Path, log: Log) -> Path:
    """Download one Debian package and unpack it (no install, no maintainer scripts) into the cache."""
    root = cache_dir / "debs" / package
    if (root / "usr").is_dir():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError(f"the base corpus needs Debian's apt-get and dpkg-deb to fetch {package}")
    debs = cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        log(f"apt-get download {package}")
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL)
        found = sorted(debs.glob(f"{package}_*.deb"))
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(root)], check=True)
    return root


# ----------------------------------------------------------------------------------------- sources


def gather_folders(folder: Path, pattern: str, prefix: str, origin: str, licence: str, log: Log) -> list[Source]:
    """One identity per speaker folder (LibriSpeech, FSDD: the folder is the speaker)."""
    out = []
    for spk in sorted(p for p in folder.iterdir() if p.is_dir()):
        pieces = _whole_files(spk.rglob(pattern), log)
        if pieces:
            out.append(Source(f"{prefix}-{spk.name}", origin, licence, pieces))
    return out


def _tags(path: Path) -> dict[str, str]:
    try:
        with sf.SoundFile(str(path)) as f:
            return f.copy_metadata()
    except Exception:  # noqa: BLE001
        return {}


def _majority_format(paths: list[Path]) -> list[Path]:
    """Keep the files in the folder's usual (rate, channels): odd ones are likely later re-recordings."""
    fmt = {p: (sf.info(str(p)).samplerate, sf.info(str(p)).channels) for p in paths}
    common, _ = Counter(fmt.values()).most_common(1)[0]
    return [p for p in paths if fmt[p] == common]


def _same_person(alpha: list[Path], syllab: list[Path]) -> str | None:
    """Evidence, from tags only, that both folders are one reader; returns the reason or None."""
    def artists(ps: list[Path]) -> set[str]:
        return {_tags(p).get("artist", "") for p in ps} - {""}

    def dates(ps: list[Path]) -> set[str]:
        return {_tags(p).get("date", "") for p in ps} - {""}

    a, s = artists(alpha), artists(syllab)
    if len(a) == 1 and a == s:
        return f"same artist tag {next(iter(a))!r}"
    da, ds = dates(alpha), dates(syllab)
    if da and ds and da & ds and not (a or s):
        return f"same recording dates {sorted(da & ds)}"
    return None


def _seconds(paths: Iterable[Path]) -> float:
    return sum(sf.info(str(p)).duration for p in paths)


def gather_klettres(root: Path, log: Log) -> list[Source]:
    """KLettres: one identity per language where tags show one reader, else the larger folder only."""
    base = root / "usr/share/klettres"
    folders = {f"{d.parent.name}/{d.name}": sorted(d.glob("*.ogg"))
               for d in sorted(base.glob("*/alpha")) + sorted(base.glob("*/syllab"))}
    shared = _shared_contents(folders)
    out = []
    for lang_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        lang = lang_dir.name
        if lang in KLETTRES_SKIP:
            log(f"klettres: skip {lang}: {KLETTRES_SKIP[lang]}")
            continue
        parts = {}
        for sub in ("alpha", "syllab"):
            files = [p for p in folders.get(f"{lang}/{sub}", [])
                     if _readable(p, log) and _md5(p) not in shared]
            if files:
                parts[sub] = _majority_format(files)
        if not parts:
            continue
        reason = _same_person(parts.get("alpha", []), parts.get("syllab", [])) \
            if len(parts) == 2 else None
        if reason:
            label, files = f"klettres-{lang}", parts["alpha"] + parts["syllab"]
            log(f"klettres: {lang}: alpha+syllab as one voice ({reason})")
        else:
            sub = max(parts, key=lambda k: _seconds(parts[k]))
            label, files = f"klettres-{lang}-{sub}", parts[sub]
            if len(parts) == 2:
                log(f"klettres: {lang}: reader of alpha/syllab unknown, keeping {sub} only")
        out.append(Source(label, "klettres", LICENCE_KLETTRES, [Piece(p) for p in files]))
    return out


def gather_hedgewars(root: Path, log: Log) -> list[Source]:
    """Hedgewars: the packs in HEDGEWARS_PACKS, minus files shared byte-for-byte with any other pack."""
    matches = glob.glob(str(root / "usr/share/**/Data/Sounds/voices"), recursive=True)
    if not matches:
        log("warning: hedgewars voices folder not found")
        return []
    voices = Path(matches[0])
    packs = {d.name: sorted(d.glob("*.ogg")) for d in sorted(voices.iterdir()) if d.is_dir()}
    shared = _shared_contents(packs)
    skipped = sorted(set(packs) - set(HEDGEWARS_PACKS))
    log(f"hedgewars: skip packs {skipped} (same actor as Default / processed / same contributor)")
    out = []
    for name in HEDGEWARS_PACKS:
        files = [p for p in packs.get(name, []) if _md5(p) not in shared]
        pieces = _whole_files(files, log)
        if pieces:
            out.append(Source(f"hedgewars-{_ascii_id(name)}", "hedgewars", LICENCE_HEDGEWARS, pieces))
    return out


def _pyannote_tests(cache_dir: Path, log: Log) -> Path | None:
    """Fetch pyannote.audio's sdist (for tests/data: AMI excerpts + RTTM) into the cache."""
    dl = cache_dir / "pyannote"
    for found in sorted(dl.glob("*/tests/data/debug.train.rttm")):
        return found.parent
    dl.mkdir(parents=True, exist_ok=True)
    said = ""
    for version in PYANNOTE_VERSIONS:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "-d", str(dl), f"pyannote.audio{version}"], check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        said = said or (done.stderr.strip().splitlines() or [""])[-1]  # e.g. "No module named pip"
        for sdist in sorted(dl.glob("pyannote*audio-*.tar.gz")):
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if "/tests/data/" in m.name]
                tar.extractall(dl, members=members, filter="data")
            for found in sorted(dl.glob("*/tests/data/debug.train.rttm")):
                return found.parent
    log(f"warning: no pyannote.audio sdist with tests/data found ({said or 'pip found none'}; {sys.executable} "
        "needs pip and the package index); AMI skipped")
    return None


def _read_rttm(path: Path) -> list[tuple[str, float, float, str]]:
    """(uri, start, end, speaker) per SPEAKER line."""
    turns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            start, dur = float(f[3]), float(f[4])
            turns.append((f[1], start, start + dur, f[7]))
    return turns


def _solo_stretches(turns: list[tuple[float, float, str]], min_s: float) -> list[tuple[float, float, str]]:
    """Each speaker's turns with every overlap with another speaker cut out; short leftovers dropped."""
    out = []
    for start, end, spk in turns:
        pieces = [(start, end)]
        for o_start, o_end, o_spk in turns:
            if o_spk == spk:
                continue
            pieces = [q for a, b in pieces for q in ((a, min(b, o_start)), (max(a, o_end), b)) if q[1] > q[0]]
        out += [(a, b, spk) for a, b in pieces if b - a >= min_s]
    return out


def _wav_for(uri: str, data: Path) -> Path | None:
    """The wav for an RTTM uri (the test data deliberately names trn00 as trñ00.wav)."""
    direct = data / f"{uri}.wav"
    if direct.exists():
        return direct
    for wav in data.glob("*.wav"):
        if _ascii_id(wav.stem) == uri:
            return wav
    return None


def gather_ami(data: Path, log: Log) -> list[Source]:
    """AMI train+development excerpts cut by RTTM; speakers of the test meetings never included."""
    test_speakers = {_ascii_id(t[3]) for rttm in data.glob("*test*.rttm") for t in _read_rttm(rttm)}
    by_uri: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for rttm in sorted(data.glob("*.rttm")):
        if "test" in rttm.name:
            continue
        for uri, start, end, spk in _read_rttm(rttm):
            if uri.startswith("tst"):
                continue
            by_uri[uri].append((start, end, _ascii_id(spk)))
    pieces: dict[str, list[Piece]] = defaultdict(list)
    for uri, turns in sorted(by_uri.items()):
        wav = _wav_for(uri, data)
        if wav is None or not _readable(wav, log):
            log(f"warning: AMI recording {uri} not found")
            continue
        for start, end, spk in _solo_stretches(turns, MIN_SEGMENT_S):
            if spk not in test_speakers:
                pieces[spk].append(Piece(wav, start, end))
    return [Source(f"ami-{spk}", "ami", LICENCE_AMI, sorted(ps, key=lambda p: (str(p.path), p.start_s)))
            for spk, ps in sorted(pieces.items())]


def gather(shared_data: Path, cache_dir: Path, log: Log = print) -> list[Source]:
    """Every training voice we may use, one Source per identity (never the test-other speakers)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    test_ids = {p.name for p in (shared_data / "librispeech-test-other").iterdir() if p.is_dir()} \
        if (shared_data / "librispeech-test-other").is_dir() else set()
    sources = [s for s in gather_folders(shared_data / "librispeech-train-clean-100", "*.flac", "libri",
                                         "librispeech", LICENCE_LIBRI, log)
               if s.label.removeprefix("libri-") not in test_ids]
    sources += gather_folders(shared_data / "fsdd", "*.wav", "fsdd", "fsdd", LICENCE_FSDD, log)
    sources += gather_klettres(_apt_extract("klettres-data", cache_dir, log), log)
    sources += gather_hedgewars(_apt_extract("hedgewars-data", cache_dir, log), log)
    tests = _pyannote_tests(cache_dir, log)
    if tests is not None:
        sources += gather_ami(tests, log)
    labels = Counter(s.label for s in sources)
    dupes = [k for k, n in labels.items() if n > 1]
    if dupes:
        raise ValueError(f"labels not unique: {dupes}")
    return sources


# ----------------------------------------------------------------------------------------- packing


def _load_piece(piece: Piece, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate``, scaled down if it would clip, edges lightly trimmed."""
    info = sf.info(str(piece.path))
    start = int(round(piece.start_s * info.samplerate))
    stop = None if piece.end_s is None else int(round(piece.end_s * info.samplerate))
    audio, sr = sf.read(str(piece.path), start=start, stop=stop, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate, quality="HQ").astype(np.float32)
    audio = _trim(audio, sample_rate)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > PEAK:
        audio *= PEAK / peak
    return audio


def _trim(audio: np.ndarray, sample_rate: int, floor_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing 10 ms frames 45 dB below the loudest one (keeps pauses inside)."""
    hop = sample_rate // 100
    n = len(audio) // hop
    if n < 3:
        return audio
    energy = (audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12
    loud = np.flatnonzero(10 * np.log10(energy / energy.max()) > floor_db)
    if loud.size == 0:
        return audio[:0]
    return audio[max(loud[0] - 1, 0) * hop: min(loud[-1] + 2, n) * hop]


def _opus_level(bitrate_kbps: float) -> float:
    """libsndfile maps compression_level 0..1 linearly onto Opus 256..6 kbit/s (measured: 0.93≈24k)."""
    return float(np.clip((256.0 - bitrate_kbps) / (256.0 - 6.0), 0.0, 1.0))


def write_opus(path: Path, audio: np.ndarray, sample_rate: int, bitrate_kbps: float) -> None:
    """Ogg Opus via libsndfile; falls back to its default bitrate if levels are unsupported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(path), audio, sample_rate, format="OGG", subtype="OPUS",
                 compression_level=_opus_level(bitrate_kbps))
    except TypeError:  # soundfile < 0.13 has no compression_level
        sf.write(str(path), audio, sample_rate, format="OGG", subtype="OPUS")


def _concat(pieces: list[Piece], sample_rate: int) -> np.ndarray:
    gap = np.zeros(int(GAP_S * sample_rate), dtype=np.float32)
    parts = []
    for piece in pieces:
        audio = _load_piece(piece, sample_rate)
        if audio.size:
            parts += [audio, gap]
    return np.concatenate(parts[:-1]) if parts else np.zeros(0, dtype=np.float32)


def pack(sources: list[Source], out_dir: Path, sample_rate: int = SAMPLE_RATE,
         bitrate_kbps: int = 24) -> Path:
    """One ``<label>.opus`` per speaker (all speech concatenated) plus ``index.json``; returns the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    speakers = []
    for src in sources:
        audio = _concat(src.pieces, sample_rate)
        if audio.size < sample_rate * MIN_SEGMENT_S:
            print(f"warning: {src.label}: no usable audio, left out", file=sys.stderr)
            continue
        name = f"{src.label}.opus"
        write_opus(out_dir / name, audio, sample_rate, bitrate_kbps)
        speakers.append({"label": src.label, "origin": src.origin, "licence": src.licence,
                         "seconds": round(len(audio) / sample_rate, 2), "file": name})
    return _write_index(out_dir, speakers, sample_rate, bitrate_kbps)


def _write_index(out_dir: Path, speakers: list[dict], sample_rate: int, bitrate_kbps: int,
                 **extra: object) -> Path:
    index = {"sample_rate": sample_rate, "bitrate_kbps": bitrate_kbps, "speakers": speakers,
             "created_by": CREATED_BY, **extra}
    path = out_dir / "index.json"
    path.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def pack_test(test_dir: Path, out_dir: Path, sample_rate: int = SAMPLE_RATE,
              bitrate_kbps: int = 24) -> Path:
    """The unseen test set, one Opus per original utterance (``<spk>/<utt>.opus``) so it can be split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    speakers = []
    for spk in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        utts = []
        for flac in sorted(spk.rglob("*.flac")):
            if not _readable(flac, print):
                continue
            audio = _load_piece(Piece(flac), sample_rate)
            rel = f"{spk.name}/{flac.stem}.opus"
            write_opus(out_dir / rel, audio, sample_rate, bitrate_kbps)
            utts.append({"file": rel, "seconds": round(len(audio) / sample_rate, 2)})
        speakers.append({"label": spk.name, "origin": "librispeech-test-other", "licence": LICENCE_LIBRI,
                         "seconds": round(sum(u["seconds"] for u in utts), 2), "utterances": utts})
    for extra in ("LICENSE.TXT", "SPEAKERS.TXT"):
        if (test_dir / extra).exists():
            shutil.copy(test_dir / extra, out_dir / extra)
    return _write_index(out_dir, speakers, sample_rate, bitrate_kbps,
                        note="UNSEEN TEST SET: never train on it")


# ----------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spkrec.training.basecorpus", description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"), help="shared data folder")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/spkrec/base-corpus")
    ap.add_argument("--out", type=Path, required=True, help="training corpus folder")
    ap.add_argument("--test-out", type=Path, help="also pack librispeech-test-other here (apart)")
    ap.add_argument("--bitrate", type=int, default=24, help="Opus kbit/s")
    args = ap.parse_args(argv)
    if args.test_out and args.test_out.resolve() == args.out.resolve():
        ap.error("--test-out must differ from --out: the test set never goes into training")
    sources = gather(args.shared, args.cache)
    index = pack(sources, args.out, bitrate_kbps=args.bitrate)
    print(f"wrote {index}: {len(sources)} speakers")
    if args.test_out:
        print(f"wrote {pack_test(args.shared / 'librispeech-test-other', args.test_out, bitrate_kbps=args.bitrate)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
