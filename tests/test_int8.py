"""Static int8 on the CPU: the copy the daemon builds from the shipped model's calibration agrees
with fp32 on real speech, is built once and reused, and every command reports and honours the
precision it runs at."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import conversation
from conftest import USER_FOLDERS, speaker_files, spkrec
from spkrec.models.agreement import AGREEMENT
from spkrec.models.audio import load_audio
from spkrec.models.base import base_model_path
from spkrec.models.engine import Engine
from spkrec.models.errors import ModelError
from spkrec.models.precision import NO_RANGES, choose
from spkrec.models.quantize import cpu_class, recipe_for
from spkrec.models.scoring import normalize
from spkrec.models.windows import frame_windows

VOICES = ("533", "1998", "3005", "2609")  # test-other: voices neither the model nor its calibration heard


def _windows(engine: Engine) -> np.ndarray:
    info = engine.info
    return np.concatenate([frame_windows(load_audio(path, info.sample_rate), info.window_samples, info.hop_samples)
                           for voice in VOICES for path in speaker_files(voice)[:2]])


def test_int8_copy_agrees_with_fp32_on_real_speech(tmp_path):
    fp32 = Engine(base_model_path(), provider="cpu")
    assert len(fp32.info.int8_ranges) > 50  # the shipped model carries its calibration
    path, precision, note = choose(base_model_path(), "auto", "cpu", tmp_path)
    assert precision == "int8" and note == "" and path.parent == tmp_path / "int8" and path.stat().st_size < 35e6
    assert path.stem.endswith(f"-{cpu_class()}-" + path.stem.rsplit("-", 2)[1] + f"-{recipe_for(cpu_class())}")
    int8 = Engine(path, provider="cpu", precision=precision)
    assert int8.info.fingerprint == fp32.info.fingerprint  # voiceprints enrolled with either serve both
    windows = _windows(fp32)
    a = np.concatenate([fp32.embed(windows[i:i + 8]) for i in range(0, len(windows), 8)])
    b = np.concatenate([int8.embed(windows[i:i + 8]) for i in range(0, len(windows), 8)])
    cosines = np.sum(normalize(a) * normalize(b), axis=1)
    assert len(windows) >= 40 and cosines.min() >= 0.99, (len(windows), cosines.min())
    graph = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph and "ConvInteger" not in graph  # static, not dynamic
    built = path.stat().st_mtime_ns
    start = time.perf_counter()
    again, _, _ = choose(base_model_path(), "auto", "cpu", tmp_path)
    assert again == path and path.stat().st_mtime_ns == built and time.perf_counter() - start < 0.1  # cached
    assert choose(base_model_path(), "fp32", "cpu", tmp_path) == (base_model_path(), "fp32", "")
    assert choose(base_model_path(), "auto", "cuda", tmp_path) == (base_model_path(), "fp32", "")  # no fp16 copy shipped


def test_the_daemon_reports_its_precision_and_honours_fp32(tmp_path):
    wav = tmp_path / "two.wav"
    conversation.assemble([(speaker_files("533")[0], "a"), (speaker_files("3005")[0], "b")], wav, gap_s=1.0)
    runs = {}
    config = tmp_path / "fp32.toml"
    config.write_text('[model]\nprecision = "fp32"\n')
    for name, args in (("auto", []), ("flag", ["--precision", "fp32"]), ("config", ["--config", str(config)])):
        events = tmp_path / f"{name}.jsonl"
        spkrec("live", "--input", str(wav), "--fast", "--no-ui", "--events", str(events), *args, check=True)
        runs[name] = conversation.read_events(events)
    listening = {name: events[0] for name, events in runs.items()}
    for name, precision in (("auto", "int8"), ("flag", "fp32"), ("config", "fp32")):
        assert listening[name]["precision"] == precision and listening[name]["model"] == str(base_model_path())
    assert list((USER_FOLDERS / "cache" / "spkrec" / "int8").glob("spkrec-base-*.onnx"))  # the copy auto runs
    labels = {name: [e["label"] for e in events if e["event"] == "speaker"] for name, events in runs.items()}
    assert len(labels["auto"]) == len(labels["flag"]) >= 4
    # identify runs through the same engine: the same precision, the same answer as the live windows' voice
    done = spkrec("identify", str(speaker_files("533")[1]), "--json", check=True)
    auto = json.loads(done.stdout)
    done = spkrec("identify", str(speaker_files("533")[1]), "--json", "--precision", "fp32", check=True)
    assert abs(json.loads(done.stdout)["score"] - auto["score"]) < 0.05


def test_a_model_without_int8_calibration(tmp_path):
    """An older model runs at fp32 under auto; asking for int8 by name is one line, exit 2."""
    model = onnx.load(str(base_model_path()))
    kept = [p for p in model.metadata_props if p.key != "spkrec.int8_ranges"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    with pytest.raises(ModelError, match="no int8 calibration"):
        choose(old, "int8", "cpu", tmp_path / "cache")
    assert choose(old, "auto", "cpu", tmp_path / "cache") == (old, "fp32", NO_RANGES)
    file = str(speaker_files("533")[1])
    done = spkrec("identify", "--model", str(old), "--precision", "int8", file)
    assert done.returncode == 2 and "no int8 calibration" in done.stderr and len(done.stderr.splitlines()) == 1
    assert spkrec("identify", "--model", str(old), file).returncode == 0


def test_a_warm_start_imports_neither_torch_nor_onnx():
    """Start-up with the int8 copy cached loads it directly: no torch, no onnx parsing the fp32
    model, no quantiser (README, "CPU: static int8": the start-up times)."""
    import subprocess
    import sys

    file = str(speaker_files("533")[1])
    spkrec("identify", file, check=True)  # warms the cache, as any first start does
    probe = ("import sys, json; from spkrec.daemon.cli import run; code = run(['identify', '--json', %r]); "
             "print(json.dumps({m: m in sys.modules for m in ('torch', 'onnx', 'onnxruntime.quantization')}))" % file)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch": False, "onnx": False,
                                                                 "onnxruntime.quantization": False}, done.stdout


def _with_ranges_scaled(factor: float, out) -> None:
    """The shipped model with its int8 calibration shrunk: its int8 copy clips nearly every
    activation, a real copy that disagrees with fp32 on any CPU."""
    model = onnx.load(str(base_model_path()))
    for prop in model.metadata_props:
        if prop.key == "spkrec.int8_ranges":
            ranges = json.loads(prop.value)
            prop.value = json.dumps({k: [lo * factor, hi * factor] for k, (lo, hi) in ranges.items()})
    onnx.save(model, str(out))


def test_a_copy_that_disagrees_is_never_run(tmp_path):
    """A copy below the agreement bound is refused, remembered, reported, and fp32 runs instead;
    asked for by name, int8 is one line and exit 2."""
    bad = tmp_path / "bad.onnx"
    _with_ranges_scaled(0.1, bad)
    path, precision, note = choose(bad, "auto", "cpu", tmp_path / "cache")
    assert (path, precision) == (bad, "fp32") and note.startswith(f"int8 disagrees with fp32 on this CPU ({cpu_class()})")
    verdicts = sorted((tmp_path / "cache" / "int8").iterdir())
    assert [v.suffix for v in verdicts] == [".verdict"] * len(verdicts) and len(verdicts) in (1, 2)  # no copy kept
    start = time.perf_counter()
    assert choose(bad, "auto", "cpu", tmp_path / "cache").note == note and time.perf_counter() - start < 0.5
    with pytest.raises(ModelError, match="int8 disagrees"):
        choose(bad, "int8", "cpu", tmp_path / "cache")
    file = str(speaker_files("533")[1])
    done = spkrec("identify", "--model", str(bad), "--precision", "int8", file)
    assert done.returncode == 2 and "int8 disagrees" in done.stderr and len(done.stderr.splitlines()) == 1
    events = tmp_path / "events.jsonl"
    done = spkrec("live", "--model", str(bad), "--input", file, "--fast", "--no-ui", "--events", str(events), check=True)
    listening = conversation.read_events(events)[0]
    assert listening["precision"] == "fp32" and listening["precision_note"].startswith("int8 disagrees")
    assert "running fp32: int8 disagrees" in done.stderr
    config = tmp_path / "bad.toml"
    config.write_text(f"[model]\npath = \"{bad}\"\n")
    report = json.loads(spkrec("doctor", "--json", "--config", str(config)).stdout)
    int8 = next(c for c in report["checks"] if c["name"] == "int8")
    assert int8["status"] == "warn" and "the CPU runs fp32: int8 disagrees" in int8["detail"]


def test_stale_copies_and_leftovers_are_swept(tmp_path):
    """A new version of a model file replaces its cached copy, whatever the model's name (brackets
    are no glob pattern here); copies and markers of the layout before copies were kept per CPU
    class go, and so does a crashed build's .tmp; a build in progress (its writer alive), other
    CPU classes' copies and other models' files stay."""
    import subprocess

    model = tmp_path / "m[1].onnx"
    model.write_bytes(base_model_path().read_bytes())
    first, _, _ = choose(model, "auto", "cpu", tmp_path / "cache")
    cache = first.parent
    owner, cpu, identity, recipe = first.stem.rsplit("-", 3)  # owner: MODEL-WHERE
    assert cpu == cpu_class()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    other_cpu = next(c for c in ("vnni", "arm64", "x86") if c != cpu)
    swept = [first.with_name(f"{first.name}.{dead}.tmp"),  # a crashed build's half copy
             cache / f"{owner}-{identity}.onnx", cache / f"{owner}-{identity}.no-ranges"]  # the old layout
    kept = [first.with_name(f"{first.name}.{writer.pid}.tmp"),  # another start building it right now
            cache / f"{owner}-{other_cpu}-{identity}-u8s8.onnx", cache / f"other-0123456789ab-{cpu}-{identity}-{recipe}.onnx"]
    try:
        for path in swept + kept:
            path.write_bytes(b"a file")
        os.utime(model, ns=(time.time_ns(), time.time_ns() + 10**9))  # an upgrade: same path, new file
        second, _, _ = choose(model, "auto", "cpu", tmp_path / "cache")
    finally:
        writer.kill()
        writer.wait()
    assert second != first and sorted(cache.iterdir()) == sorted([second, *kept])


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU")
def test_on_an_avx2_cpu_without_vnni(tmp_path):
    """On a CPU with AVX2 and no VNNI (qemu's EPYC-Rome: ONNX Runtime picks its kernels from the
    CPUID qemu emulates) the u8s8 copy saturates and drifts from fp32, the CPU's own recipe
    (7-bit weights, u8s7) agrees, and the agreement check on its synthetic windows tells the two apart
    (int8_cpus_bench.py measures the same on real speech, README "int8 on every CPU")."""
    assert shutil.which("qemu-x86_64"), "qemu-user is installed by .ci/setup"
    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    import int8_cpus_bench as bench

    bench.prepare(tmp_path, count=1, synthetic=2)  # emulation costs ~15 s a window: the check's first two
    children = {recipe: bench.start_child(tmp_path, recipe, emulate=True) for recipe in ("u8s8", "u8s7")}
    rows = {recipe: bench.finish_child(proc) for recipe, proc in children.items()}
    assert rows["u8s7"]["cpu_class"] == "x86" and rows["u8s7"]["recipe_chosen_here"] == "u8s7"
    assert rows["u8s8"]["synthetic"]["min"] < AGREEMENT, rows  # the saturation is real there, and the check sees it
    assert rows["u8s7"]["synthetic"]["min"] >= AGREEMENT and rows["u8s7"]["speech"]["min"] >= 0.98, rows


def test_a_cache_that_cannot_be_written(tmp_path):
    """auto runs fp32 and says why; int8 asked for by name is one error."""
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    path, precision, note = choose(base_model_path(), "auto", "cpu", blocked)
    assert (path, precision) == (base_model_path(), "fp32") and "cannot be cached" in note
    with pytest.raises(ModelError, match="cannot write the int8 copy"):
        choose(base_model_path(), "int8", "cpu", blocked)
