"""``spkrec doctor``: an install checked the way a support engineer would, one line per check.

Each check says ✓ (fine), ! (works, but look at this) or ✗ (broken, with the fix); the exit
status is 1 when any check is ✗. The training extra is checked in a process of its own
(``python -m spkrec.training.selfcheck``, started first so it runs while the rest is checked):
the daemon never imports torch, and a torch build that crashes on load takes only that process
down.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from spkrec.models.config import Config, ConfigError, load_config
from spkrec.models.errors import SpkrecError

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MARKS = {OK: "✓", WARN: "!", FAIL: "✗", SKIP: "-"}
# import name of each core requirement that is not its distribution name
IMPORT_NAMES = {"webrtcvad-wheels": "webrtcvad", "prometheus-client": "prometheus_client"}
SETUP_FIX = "bash .ci/setup (or pip install --force-reinstall spkrec)"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" — fix: {self.fix}" if self.fix and self.status in (FAIL, WARN) else ""
        return f"{MARKS[self.status]} {self.name:<13} {self.detail}{fix}"


def _requirements(extra: str | None) -> list[str]:
    """Distribution names spkrec requires (core when ``extra`` is None), from its own metadata."""
    names = []
    for line in metadata.requires("spkrec") or []:
        spec, _, marker = line.partition(";")
        wanted = f'extra == "{extra}"' if extra else ""
        if (extra is None and "extra" not in marker) or (extra and wanted in marker.replace("'", '"')):
            names.append(spec.split("[")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip())
    return names


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info >= (3, 11)
    return Check("python", OK if ok else FAIL, f"{version} ({sys.executable})", "" if ok else "Python 3.11 or newer")


def check_core() -> Check:
    found, broken = [], []
    for name in _requirements(None):
        try:
            version = metadata.version(name)
            __import__(IMPORT_NAMES.get(name, name))
            found.append(f"{name} {version}")
        except metadata.PackageNotFoundError:
            broken.append(f"{name} is not installed")
        except Exception as exc:  # ImportError, OSError of a native library (PortAudio is checked apart)
            if name == "sounddevice" and isinstance(exc, OSError):
                found.append(f"{name} {metadata.version(name)}")
                continue
            broken.append(f"{name} does not import ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    if broken:
        return Check("core", FAIL, "; ".join(broken), SETUP_FIX)
    return Check("core", OK, ", ".join(found))


def start_training_check() -> subprocess.Popen | None:
    """The training extra's self-check, started now and read last; None when torch is absent."""
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    return subprocess.Popen([sys.executable, "-m", "spkrec.training.selfcheck"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_training_check(proc: subprocess.Popen | None, timeout: float = 60.0) -> list[Check]:
    if proc is None:
        return [Check("train extra", SKIP, "not installed (optional: pip install 'spkrec[train]' for spkrec train)")]
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return [Check("train extra", FAIL, f"the torch self-check did not finish in {timeout:.0f} s", SETUP_FIX)]
    try:
        results = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:200]
        return [Check("train extra", FAIL, f"the torch self-check crashed: {last}", SETUP_FIX)]
    return [Check(r["name"], OK if r["ok"] else FAIL, f"{r['version'] or '-'}: {r['detail']}", r["fix"])
            for r in results]


def check_onnxruntime(cfg: Config) -> Check:
    import onnxruntime as ort

    builds = [name for name in ("onnxruntime", "onnxruntime-gpu") if _installed(name)]
    providers = ort.get_available_providers()
    detail = f"{ort.__version__} ({', '.join(builds)}): {', '.join(providers)}"
    if len(builds) > 1:
        return Check("onnxruntime", FAIL, f"{detail}; both builds share one package folder",
                     "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them")
    if cfg.model.provider == "cuda" and "CUDAExecutionProvider" not in providers:
        return Check("onnxruntime", FAIL, f"{detail}; [model] provider = \"cuda\" but this build has no CUDA",
                     "pip uninstall onnxruntime && pip install onnxruntime-gpu (README, GPU), or provider = \"auto\"")
    return Check("onnxruntime", OK, detail)


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_audio() -> Check:
    from spkrec.daemon.pipeline.devices import default_input, list_inputs, portaudio

    try:
        sd = portaudio()
        inputs = list_inputs()
    except SpkrecError as exc:
        return Check("audio", FAIL, str(exc).split(": apt-get")[0], "apt-get install libportaudio2")
    version = sd.get_portaudio_version()[1].split(",")[0]
    if not inputs:
        return Check("audio", WARN, f"{version}: no input device (files, stdin and --demo still work)",
                     "connect a microphone; `spkrec devices` lists inputs")
    default = default_input()
    names = ", ".join(f"{d.index} {d.name}" for d in inputs[:4]) + (" ..." if len(inputs) > 4 else "")
    return Check("audio", OK, f"{version}: {len(inputs)} input(s): {names}; default "
                              f"{default.index if default else 'none'}")


def check_model(cfg: Config) -> tuple[Check, object | None]:
    """The model in force: the shipped file against its checksum, or the configured one; its metadata."""
    from spkrec.models import base
    from spkrec.models.precision import _read_info

    try:
        if cfg.model.path:
            path = Path(cfg.model.path).expanduser()
            if not path.is_file():
                return Check("model", FAIL, f"{path} not found", "check [model] path / --model"), None
            info = _read_info(path)
            return Check("model", OK, f"{path} (configured), fingerprint {info.fingerprint}"), info
        path = base.base_model_path()
    except SpkrecError as exc:
        return Check("model", FAIL, str(exc), SETUP_FIX), None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != base.SHA256:
        return Check("model", FAIL, f"the shipped {path.name} is damaged (sha256 {digest[:12]}, expected "
                                    f"{base.SHA256[:12]})", SETUP_FIX), None
    info = _read_info(path)
    return Check("model", OK, f"shipped base model, sha256 verified, fingerprint {info.fingerprint}"), info


def check_config(explicit: str | None) -> tuple[Check, Config | None]:
    try:
        cfg = load_config(explicit)
    except ConfigError as exc:
        return Check("config", FAIL, str(exc), "fix the key it names; `spkrec config` shows the merged result"), None
    where = f"{cfg.file}" if cfg.file else "the packaged defaults (no config file found)"
    return Check("config", OK, f"{where}; `spkrec config` shows each key's origin"), cfg


def _folder(label: str, folder: Path) -> Check:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe != folder:
        ok = os.access(probe, os.W_OK)
        return Check(label, OK if ok else FAIL, f"{folder} (created on first use)",
                     "" if ok else f"make {probe} writable for this user, or set another folder in the config")
    if not os.access(folder, os.W_OK):
        return Check(label, FAIL, f"{folder} is not writable", "chown it to this user, or set another folder")
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        return Check(label, WARN, f"{folder} is readable by others (mode {mode:o})", f"chmod 700 {folder}")
    return Check(label, OK, f"{folder} (writable, private)")


def check_gallery(cfg: Config, info) -> list[Check]:
    path = cfg.gallery_path()
    checks = [_folder("gallery dir", path.parent)]
    if not path.exists():
        checks.append(Check("voiceprints", OK, "no gallery yet: `spkrec enroll NAME` creates it"))
        return checks
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        checks.append(Check("gallery", WARN, f"{path} is readable by others", f"chmod 600 {path}"))
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        rows = db.execute("SELECT name, fingerprint FROM speakers ORDER BY name").fetchall()
        db.close()
    except sqlite3.Error as exc:
        checks.append(Check("voiceprints", FAIL, f"{path} is not a readable gallery ({exc})",
                            "restore it from `spkrec speakers export`, or move it away"))
        return checks
    if info is None:
        return checks
    foreign = [name for name, fingerprint in rows if fingerprint != info.fingerprint]
    if foreign:
        names = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        checks.append(Check("voiceprints", FAIL, f"{len(foreign)} of {len(rows)} made with another model: {names}",
                            "re-enroll them with this model (`spkrec enroll NAME --input ...`)"))
    else:
        checks.append(Check("voiceprints", OK, f"{len(rows)} enrolled, all made with this model"))
    return checks


def check_int8(cfg: Config, info) -> Check:
    """The CPU's int8 copy, built and checked against fp32 here if it is not cached yet."""
    from spkrec.daemon.default_model import ensure_model
    from spkrec.models.precision import NO_RANGES, choose
    from spkrec.models.quantize import cpu_class

    if info is None:
        return Check("int8", SKIP, "no model to check")
    try:
        choice = choose(ensure_model(cfg), "auto", "cpu", cfg.cache_dir())
    except SpkrecError as exc:
        return Check("int8", FAIL, str(exc), "[model] precision = \"fp32\"")
    if choice.precision == "int8":
        recipe = choice.path.stem.rsplit("-", 1)[-1]  # the copy's name ends in its recipe (models.precision)
        return Check("int8", OK, f"the CPU copy agrees with fp32 on this CPU ({cpu_class()}, {recipe}): {choice.path}")
    if choice.note == NO_RANGES:
        return Check("int8", SKIP, "the model carries no int8 calibration: the CPU runs fp32")
    return Check("int8", WARN, f"the CPU runs fp32: {choice.note}",
                 "none needed (fp32 is correct, about 2x slower); report the CPU model if you want int8 here")


def run_checks(explicit_config: str | None) -> list[Check]:
    training = start_training_check()
    checks = [check_python(), check_core()]
    config_check, cfg = check_config(explicit_config)
    cfg = cfg or Config()
    checks += [check_onnxruntime(cfg), check_audio()]
    model_check, info = check_model(cfg)
    checks += [model_check, config_check, check_int8(cfg, info), _folder("cache", cfg.cache_dir()),
               *check_gallery(cfg, info)]
    checks += finish_training_check(training)
    return checks


def doctor(explicit_config: str | None, as_json: bool, out: Callable[[str], None] = print) -> int:
    start = time.perf_counter()
    checks = run_checks(explicit_config)
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        out(json.dumps({"ok": not failed, "seconds": round(time.perf_counter() - start, 2),
                        "checks": [asdict(c) for c in checks]}))
    else:
        for check in checks:
            out(check.line())
        out(f"{'all checks passed' if not failed else f'{len(failed)} check(s) failed'} "
            f"in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0
