"""Benchmark: meeting labelling, our encoder against a reference one, on synthetic meetings and real AMI audio.

Two encoders run through the same daemon with the same config file (no per-encoder tuning:
each brings only its own metadata thresholds, ``eer`` to ``cluster_window``/``cluster_centroid``):
- ours (``--model``, or a run folder's model.onnx);
- a reference: Resemblyzer's GE2E network in our model contract (reference_encoder.py, built
  with the clustering scales of ``models.clustering.measure_scales``, default
  /tmp/resemblyzer-spkrec.onnx, reused when current; ``--no-reference`` skips it).
It separates what the daemon's meeting logic (VAD, windows, clustering, turns) costs from what
the encoder costs.

Synthetic meetings of 2, 4 and 6 speakers take the test-other voices (never in our model's
training set): half of them are enrolled from their first 6 recordings, the other half are
strangers who must become consistent guests. Their remaining recordings take turns in a seeded
random order, with pauses from 0.2 to 1.5 s between turns. Each meeting runs through the real CLI:
- `spkrec label FILE --rttm` (offline, as fast as possible);
- `spkrec live --meeting --input FILE` (the live daemon on a real-time replay of the same audio;
  ``--no-live`` skips it). Its turns are scored under their final labels (``relabel`` events
  applied in order to the turns already received) and as first emitted (``der_as_emitted``).

Real meetings: the AMI excerpts of pyannote.audio's test data (30 s each, UEM 0-30 s: the
development, test and train lists), nobody enrolled (every voice is a guest), offline and live
(``--fast``: stream time is what turns are stamped with, so only the wall time changes).
Our base model trained on the AMI train and development excerpts' speakers (its metadata's
training['data']['ami'], training/basecorpus.py gather_ami); the test speakers it never heard.
Only the test rows are unseen voices for it.

Scored with pyannote.metrics: DER with a 0.25 s collar (optimal label mapping, so guests count
as right when consistent), its parts (missed speech, false alarm, confusion), per file and
pooled per AMI set (error components summed over files, over the total summed). Live runs of the
synthetic meetings also give the speaker change latency: for each reference change of speaker,
the stream time at which a turn boundary within 1.5 s of it was confirmed, minus the change
time (p50/p90; missed changes counted). Only the enrolled voices are scored (`trained_speakers =
false`: the model's own training voices are corpus speakers, not participants). The gallery is
calibrated as a user would (`spkrec calibrate`, impostors from the calibration share of
train-clean-100, see verification_bench.py; the same impostors for both encoders).

Every CLI call runs a copy of daemon/, models/ and training/ taken when the benchmark starts
(first on PYTHONPATH): a run takes over 20 minutes, and edits landing in the tree meanwhile must
not split its rows between two versions of the daemon. The JSON says which commit it was.

``--model PATH`` scores an existing spkrec ONNX model instead of a run folder's. The
calibration impostors are then verification_bench.py's for that model (without the voices its
metadata says it never heard, which that benchmark keeps as strangers). Every encoder enrolls
at its own one-voice bar (``[enroll] same_voice_cosine = 0``: its ``cluster_centroid``).
``--precision`` sets ``[model] precision`` for every call (default auto: static int8 on a CPU).

    .venv/bin/python tests/benchmarks/meeting_bench.py --run /tmp/bench-run \
        [--out tests/benchmarks/results/meeting.json] [--no-live] [--no-reference]
    .venv/bin/python tests/benchmarks/meeting_bench.py --model models/base/spkrec-base.onnx \
        --out tests/benchmarks/results/meeting_base.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import machine  # noqa: E402
from verification_bench import ENROLLED, ENROLL_FILES, held_out_voices, run_facts, voice_split  # noqa: E402

from spkrec.models.audio import load_audio  # noqa: E402
from spkrec.models.engine import Engine  # noqa: E402
from spkrec.training.basecorpus import _ascii_id, _pyannote_tests, _read_rttm, _wav_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RATE = 16000
COLLAR = 0.25
REFERENCE_OUT = Path("/tmp/resemblyzer-spkrec.onnx")
AMI_SETS = ("development", "test", "train")
AMI_CAVEAT = ("Our base model's training data included the speakers of the AMI train and development excerpts "
              "(metadata training['data']['ami']; training/basecorpus.py gather_ami takes train+dev speakers, test "
              "speakers never): only the test excerpts are unseen voices for it. The reference encoder (Resemblyzer) "
              "is not known to have heard AMI.")
DIART = "diart (Coria et al. 2021): latency tunable from 0.5 s to 5 s"
PACKAGE = ("daemon", "models", "training")  # spkrec.daemon, spkrec.models, spkrec.training (pyproject package-dir)
FROZEN: Path | None = None  # the code snapshot the CLI runs from (freeze_code)


def code_digest() -> str:
    """Hash of the daemon, model and training code and the shipped model as they are on disk now."""
    files = subprocess.run(["git", "ls-files", *PACKAGE], cwd=REPO, capture_output=True, text=True).stdout.split()
    digest = hashlib.sha256()
    for name in sorted(files):
        path = REPO / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()[:16]


def freeze_code(work: Path) -> Path:
    """A copy of the package as it is on disk now, which every CLI call of this run imports (first
    on PYTHONPATH): other work may edit and commit the tree during a run of half an hour, and
    rows from two versions of the daemon would not compare."""
    root = work / "code"
    for folder in PACKAGE:
        shutil.copytree(REPO / folder, root / "spkrec" / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / "spkrec" / "__init__.py").write_text("")
    return root


def spkrec(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI (on the frozen code, once ``FROZEN`` is set); a failure prints its command and
    stderr (the traceback) and stops the benchmark."""
    command = [str(Path(sys.executable).with_name("spkrec")), *args]
    env = {**os.environ, "PYTHONPATH": str(FROZEN)} if FROZEN is not None else None
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    if done.returncode:
        print(f"spkrec failed (exit {done.returncode}), cwd {cwd}:\n{shlex.join(command)}\n{done.stderr}",
              file=sys.stderr)
        raise SystemExit(1)
    return done


def build_meeting(speakers: list[str], out: Path, seed: int) -> list[tuple[float, float, str]]:
    rng = np.random.default_rng(seed)
    order = [(f, s) for s in speakers for f in sorted((ENROLLED / s).glob("*.flac"))[ENROLL_FILES:]]
    order = [order[i] for i in rng.permutation(len(order))]
    parts, turns, cursor = [], [], 0
    for path, speaker in order:
        speech = load_audio(path, RATE)
        gap = np.zeros(int(rng.uniform(0.2, 1.5) * RATE), np.float32)
        turns.append((cursor / RATE, (cursor + speech.size) / RATE, speaker))
        parts += [speech, gap]
        cursor += speech.size + gap.size
    sf.write(out, np.concatenate(parts), RATE, subtype="PCM_16")
    return turns


def annotation(turns) -> Annotation:
    """One track per turn: AMI's reference has overlapping (even identical) segments of two voices."""
    a = Annotation()
    for i, (start, end, label) in enumerate(turns):
        a[Segment(start, end), i] = label
    return a


def turns_of(events: list[dict]) -> tuple[list[dict], list[tuple[float, float, str]], int]:
    """(turn events, their turns under final labels, relabel count): each relabel renames the turns
    received so far that carry ``was`` and start within [start, end]."""
    turns = [e for e in events if e["event"] == "turn"]
    final: list[list] = []
    relabels = 0
    for e in events:
        if e["event"] == "turn":
            final.append([e["start"], e["end"], e["label"]])
        elif e["event"] == "relabel":
            relabels += 1
            for t in final:
                if t[2] == e["was"] and e["start"] <= t[0] <= e["end"]:
                    t[2] = e["label"]
    return turns, [tuple(t) for t in final], relabels


def der(metric: DiarizationErrorRate, reference: Annotation, hypothesis: Annotation, uem) -> dict[str, float]:
    """DER and its parts (shares of the reference speech) for one file; ``metric`` accumulates it."""
    parts = metric(reference, hypothesis, uem=uem, detailed=True)
    return parts_of(parts)


def parts_of(parts) -> dict[str, float]:
    total = parts["total"] or 1.0
    return {"der": round((parts["missed detection"] + parts["false alarm"] + parts["confusion"]) / total, 4),
            "missed": round(parts["missed detection"] / total, 4),
            "false_alarm": round(parts["false alarm"] / total, 4), "confusion": round(parts["confusion"] / total, 4)}


def score(reference, events: list[dict], uem=None, live: bool = True) -> dict[str, Any]:
    """DER of the final labels; live, also DER as first emitted, relabels and change latency."""
    turns, hypothesis, relabels = turns_of(events)
    uem = uem if uem is not None else Segment(0, reference[-1][1])
    out: dict[str, Any] = der(DiarizationErrorRate(collar=COLLAR), annotation(reference), annotation(hypothesis), uem)
    out["speakers_found"] = len({h[2] for h in hypothesis})
    if live:
        emitted = [(t["start"], t["end"], t["label"]) for t in turns]
        out["der_as_emitted"] = der(DiarizationErrorRate(collar=COLLAR), annotation(reference), annotation(emitted),
                                    uem)["der"]
        out["relabels"] = relabels
        out["relabel_events"] = [e for e in events if e["event"] == "relabel"]
    out["hyp_labels"] = sorted({h[2] for h in hypothesis})
    return out


def change_latency(reference, events: list[dict]) -> dict[str, Any]:
    """Stream time from each reference change of speaker to a confirmed turn boundary within 1.5 s of it."""
    turns = [e for e in events if e["event"] == "turn"]
    changes = [nxt[0] for cur, nxt in zip(reference, reference[1:]) if cur[2] != nxt[2]]
    latencies, missed = [], 0
    for change in changes:
        near = [t["confirmed"] - change for t in turns if abs(t["end"] - change) <= 1.5 and t["confirmed"] >= change]
        if near:
            latencies.append(min(near))
        else:
            missed += 1
    return {"change_latency_p50_s": round(float(np.percentile(latencies, 50)), 2) if latencies else None,
            "change_latency_p90_s": round(float(np.percentile(latencies, 90)), 2) if latencies else None,
            "changes": len(changes), "changes_missed": missed}


def run_mode(mode: str, wav: Path, out: Path, model: str, config: Path, cwd: Path, fast: bool) -> tuple[list[dict], float]:
    """One `label` or `live --meeting` run: (its events, wall seconds). The events file is appended
    to by the daemon, so it is removed first."""
    events = out / f"{mode}.jsonl"
    events.unlink(missing_ok=True)
    if mode == "label":
        command = ["label", str(wav), "--rttm", str(out / "label.rttm")]
    else:
        command = ["live", "--meeting", "--input", str(wav), "--no-ui", *(["--fast"] if fast else [])]
    start = time.perf_counter()
    spkrec(*command, "--events", str(events), "--model", model, "--config", str(config), cwd=cwd)
    wall = time.perf_counter() - start
    return [json.loads(line) for line in events.read_text().splitlines()], wall


def ami_files(data: Path) -> list[tuple[str, str, Path, list[tuple[float, float, str]], Timeline]]:
    """(set, uri, wav, reference turns, UEM) of every excerpt in pyannote's debug lists."""
    out = []
    for subset in AMI_SETS:
        turns = _read_rttm(data / f"debug.{subset}.rttm")
        uems: dict[str, Timeline] = {}
        for line in (data / f"debug.{subset}.uem").read_text(encoding="utf-8").splitlines():
            f = line.split()
            if len(f) == 4:
                uems[f[0]] = uems.get(f[0], Timeline(uri=f[0])).add(Segment(float(f[2]), float(f[3])))
        for entry in (data / f"debug.{subset}.lst").read_text(encoding="utf-8").split():
            uri = _ascii_id(entry)  # trñ00 is trn00 in the RTTM and UEM
            wav = _wav_for(uri, data)
            if wav is None:
                raise SystemExit(f"no wav for {uri} in {data}")
            out.append((subset, uri, wav, [(s, e, spk) for u, s, e, spk in turns if u == uri], uems[uri]))
    return out


def synthetic_table(results: dict[str, Any]) -> str:
    lines = [f"Synthetic meetings (test-other voices, half enrolled). Change latency: live only; {DIART}.", "",
             "| speakers | audio | encoder | mode | DER | DER as emitted | miss | false alarm | confusion | "
             "speakers found | change latency p50 / p90 | missed changes | relabels | RTF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["meetings"]:
        for name, runs in row["encoders"].items():
            for mode in ("label", "live"):
                if mode not in runs:
                    continue
                r = runs[mode]
                live = mode == "live"
                emitted = f"{r['der_as_emitted']:.1%}" if live else "-"
                lines.append(
                    f"| {row['speakers']} ({len(row['enrolled'])} enrolled) | {row['seconds']:.0f} s | {name} | {mode} | "
                    f"{r['der']:.1%} | {emitted} | "
                    f"{r['missed']:.1%} | {r['false_alarm']:.1%} | {r['confusion']:.1%} | "
                    f"{r['speakers_found']} / {row['speakers']} | "
                    + (f"{r['change_latency_p50_s']} / {r['change_latency_p90_s']} s | "
                       f"{r['changes_missed']}/{r['changes']} | {r['relabels']} | " if live else "- | - | - | ")
                    + f"{r['real_time_factor']} |")
    return "\n".join(lines)


def ami_table(results: dict[str, Any]) -> str:
    ami = results["ami"]
    lines = [f"AMI excerpts (pyannote.audio test data, 30 s each, UEM, collar {COLLAR} s, nobody enrolled; "
             f"live with --fast; pooled rows sum speakers found / in the reference over the set's files). "
             f"CAVEAT: {AMI_CAVEAT}", "",
             "| set | file | unseen by ours | encoder | mode | DER | DER as emitted | miss | false alarm | confusion | "
             "speakers found / ref | relabels |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ami["files"] + ami["pooled"]:
        live = r["mode"] == "live"
        emitted = f"{r['der_as_emitted']:.1%}" if live and r.get("der_as_emitted") is not None else "-"
        lines.append(f"| {r['set']} | {r['file']} | {'yes' if r['set'] == 'test' else 'no (trained on)'} | "
                     f"{r['encoder']} | {r['mode']} | {r['der']:.1%} | {emitted} | {r['missed']:.1%} | "
                     f"{r['false_alarm']:.1%} | {r['confusion']:.1%} | {r['speakers_found']} / {r['speakers']} | "
                     f"{r['relabels'] if live else '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="spkrec run folder with model.onnx")
    which.add_argument("--model", type=Path, help="an existing spkrec ONNX model (no training)")
    parser.add_argument("--out", type=Path, default=REPO / "tests/benchmarks/results/meeting.json")
    parser.add_argument("--no-live", action="store_true", help="skip the live runs")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference encoder (Resemblyzer)")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="[model] precision for every CLI call (auto = static int8 on the CPU, as installed)")
    parser.add_argument("--reference-out", type=Path, default=REFERENCE_OUT,
                        help=f"the reference encoder's file, built or reused (default {REFERENCE_OUT})")
    args = parser.parse_args()
    started = time.perf_counter()
    global FROZEN
    work = Path(tempfile.mkdtemp(prefix="spkrec-meeting-bench-"))
    digest = code_digest()
    FROZEN = freeze_code(work)
    model = Path(args.model if args.model is not None else args.run / "model.onnx").resolve()
    if model.is_relative_to(REPO):  # the shipped model, frozen with the code
        model = FROZEN / "spkrec" / model.relative_to(REPO)
    model = str(model)
    ours = Engine(model, "cpu").info
    encoders = {Path(model).stem: model}
    if not args.no_reference:
        from reference_encoder import build

        encoders["resemblyzer (reference)"] = str(build(args.reference_out))
    infos = {name: Engine(path, "cpu").info for name, path in encoders.items()}
    held_out = held_out_voices(ours) if args.model is not None else []
    impostors = voice_split(held_out)[1]
    # the gallery path is relative: each encoder runs in its own folder (galleries are per model),
    # so both read the very same config file; training voices are not meeting participants
    config_text = (f"[model]\nprecision = \"{args.precision}\"\n[gallery]\npath = \"gallery.sqlite\"\n"
                   "[decision]\ntrained_speakers = false\n")
    voices = sorted(p.name for p in ENROLLED.iterdir() if p.is_dir())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.splitlines()
    where_from = subprocess.run([sys.executable, "-c", "import spkrec.daemon.cli as c; print(c.__file__)"],
                                env={**os.environ, "PYTHONPATH": str(FROZEN)}, capture_output=True, text=True)
    if not where_from.stdout.startswith(str(FROZEN)):
        raise SystemExit(f"the CLI would not run the frozen code in {FROZEN}: {where_from.stdout}{where_from.stderr}")
    results: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]), **run_facts(), "machine": machine(),
        "git": {"head": head, "modified": [line[3:] for line in dirty], "code_sha256": digest,
                "frozen_copy": "every CLI call ran a copy of daemon/, models/, training/ taken at the start"},
        "model": str(args.model if args.model is not None else args.run / "model.onnx"), "fingerprint": ours.fingerprint,
        "encoders": {name: {"path": path, "fingerprint": infos[name].fingerprint,
                            "thresholds": {k: round(float(v), 4) for k, v in (infos[name].thresholds or {}).items()},
                            "window_s": infos[name].window_s, "hop_s": infos[name].hop_s}
                     for name, path in encoders.items()},
        "config": config_text, "collar_s": COLLAR,
        "same_voice_cosine": "each model's own (" + ", ".join(f"{n} {i.thresholds['cluster_centroid']:.3f}"
                                                               for n, i in infos.items()) + ")",
        "calibration_impostors": [v.name for v in impostors],
        "live": not args.no_live, "latency_note": DIART, "meetings": []}
    modes = ["label"] + ([] if args.no_live else ["live"])
    for n, seed in ((2, 2), (4, 4), (6, 6)):
        speakers = [voices[i] for i in np.random.default_rng(seed).permutation(len(voices))[:n]]
        enrolled, strangers = speakers[: n // 2], speakers[n // 2:]
        folder = work / f"m{n}"
        folder.mkdir()
        config = folder / "config.toml"
        config.write_text(config_text)
        wav = folder / f"meeting{n}.wav"
        reference = build_meeting(speakers, wav, seed)
        row: dict[str, Any] = {"speakers": n, "enrolled": enrolled, "strangers": strangers,
                               "seconds": round(reference[-1][1], 1), "turns": len(reference), "encoders": {}}
        for name, path in encoders.items():
            where = folder / name.split()[0]
            where.mkdir()
            for speaker in enrolled:
                files = sorted((ENROLLED / speaker).glob("*.flac"))[:ENROLL_FILES]
                spkrec("enroll", speaker, "--input", *map(str, files), "--model", path, "--config", str(config),
                       cwd=where)
            calibrated = spkrec("calibrate", "--impostors", *map(str, impostors), "--model", path, "--config",
                                str(config), cwd=where)
            runs: dict[str, Any] = {"calibrate": calibrated.stdout.strip().splitlines()[-8:]}
            for mode in modes:
                events, wall = run_mode(mode, wav, where, path, config, where, fast=False)
                runs[mode] = {**score(reference, events, live=mode == "live"),
                              **(change_latency(reference, events) if mode == "live" else {}),
                              "wall_s": round(wall, 1), "real_time_factor": round(wall / reference[-1][1], 3)}
                print(json.dumps({"speakers": n, "encoder": name, "mode": mode,
                                  **{k: v for k, v in runs[mode].items() if k != "relabel_events"}}), flush=True)
            row["encoders"][name] = runs
        results["meetings"].append(row)
    data = _pyannote_tests(Path.home() / ".cache" / "spkrec" / "base-corpus", print)
    if data is None:
        results["ami"] = None
    else:
        ami: dict[str, Any] = {"data": str(data), "caveat": AMI_CAVEAT, "live_fast": True,
                               "unseen_by_ours": ["test"], "files": [], "pooled": []}
        config = work / "ami" / "config.toml"
        config.parent.mkdir()
        config.write_text(config_text)  # no gallery file: nobody enrolled, everybody is a guest
        files = ami_files(data)
        for name, path in encoders.items():
            for mode in modes:
                pooled = {subset: DiarizationErrorRate(collar=COLLAR) for subset in AMI_SETS}
                pooled_emitted = {subset: DiarizationErrorRate(collar=COLLAR) for subset in AMI_SETS}
                found: dict[str, list] = {subset: [0, 0, 0] for subset in AMI_SETS}  # found, reference, relabels
                for subset, uri, wav, reference, uem in files:
                    where = work / "ami" / name.split()[0] / uri
                    where.mkdir(parents=True, exist_ok=True)
                    events, wall = run_mode(mode, wav, where, path, config, where, fast=True)
                    r = score(reference, events, uem=uem, live=mode == "live")
                    turns, hypothesis, _ = turns_of(events)
                    pooled[subset](annotation(reference), annotation(hypothesis), uem=uem)
                    pooled_emitted[subset](annotation(reference),
                                           annotation([(t["start"], t["end"], t["label"]) for t in turns]), uem=uem)
                    r = {"set": subset, "file": uri, "encoder": name, "mode": mode,
                         "speakers": len({t[2] for t in reference}), **r, "wall_s": round(wall, 1)}
                    found[subset][0] += r["speakers_found"]
                    found[subset][1] += r["speakers"]
                    found[subset][2] += r.get("relabels", 0)
                    ami["files"].append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "relabel_events"}), flush=True)
                for subset in AMI_SETS:
                    metric = pooled[subset]
                    ami["pooled"].append({"set": subset, "file": "pooled", "encoder": name, "mode": mode,
                                          **parts_of(metric), "der_pyannote_abs": round(abs(metric), 4),
                                          "speakers_found": found[subset][0], "speakers": found[subset][1],
                                          "relabels": found[subset][2],
                                          "der_as_emitted": round(abs(pooled_emitted[subset]), 4)
                                          if mode == "live" else None})
        results["ami"] = ami
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["git"]["tree_changed_during_run"] = code_digest() != digest  # the frozen copy kept the rows on one version
    print()
    print(synthetic_table(results))
    if results["ami"] is not None:
        print()
        print(ami_table(results))
    print(f"\nwall time {results['wall_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
