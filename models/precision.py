"""Which copy of a model runs: fp32, static int8 on a CPU, fp16 on CUDA (``[model] precision``).

``auto`` picks what is fastest where the model runs at no measurable loss (README, "CPU: static int8"):
the static int8 copy on the CPU provider, built from the ranges the model carries
(``models.quantize``) and cached; an fp16 copy next to the model (``MODEL.fp16.onnx``, written by
``spkrec export --fp16``) on CUDA. An int8 copy is used only once it agrees with fp32 on the
CPU that builds it (``models.agreement``). Where a model has neither, or its copy disagrees,
``auto`` runs fp32, and says so in the precision and note it reports; asking for ``int8`` or ``fp16`` by name and not getting it
is an error, never a quiet substitute.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import NamedTuple

from .agreement import AGREEMENT, check_windows, min_cosine
from .errors import ModelError, SpkrecError
from .private import private_dir

PRECISIONS = ("auto", "fp32", "int8", "fp16")
NO_RANGES = "no int8 calibration in the model"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Choice(NamedTuple):
    """The file to run, its precision, and why it is not the copy ``auto`` prefers ('' when it is)."""
    path: Path
    precision: str
    note: str = ""


def _int8_copy(path: Path, cache_dir: Path, recipe: str, cpu: str) -> Path:
    """Where the int8 copy of this exact file for this class of CPU lives: keyed by the file's
    identity (path, size, modification time) and the recipe, so a start with a warm cache reads
    no fp32 metadata at all, and a cache carried to another kind of CPU is not trusted."""
    from .quantize import QUANTIZER

    stat = path.stat()
    where = _digest(str(path.resolve()))
    identity = _digest(f"{stat.st_size}|{stat.st_mtime_ns}|{QUANTIZER}")
    return cache_dir / "int8" / f"{path.stem}-{where}-{cpu}-{identity}-{recipe}.onnx"


ABANDONED_TMP_S = 86400.0  # a .tmp this old is a leftover even if its writer's pid lives (reused)


def _drop_stale(copy: Path) -> None:
    """The cache holds one version per model path: for this path, what is cached for an earlier
    version on this CPU class (copies, verdicts), files of the layout before copies were kept
    per CPU class (``MODEL-WHERE-IDENTITY.onnx`` and ``.no-ranges`` markers) and crashed builds'
    ``.tmp`` files are removed. Other CPU classes' copies stay (a cache shared between machines).

    Names are compared as text, never as a glob: a model named ``m[1].onnx`` is no pattern."""
    from .quantize import CPU_CLASSES

    group, identity, _ = copy.stem.rsplit("-", 2)  # group: MODEL-WHERE-CPU
    owner, cpu = group.rsplit("-", 1)  # owner: MODEL-WHERE, every file of this model path
    for old in copy.parent.iterdir():
        if old == copy or not old.name.startswith(owner + "-"):
            continue
        fields = old.name[len(owner) + 1:].split("-", 2)
        if old.name.endswith(".tmp"):
            stale = _abandoned(old)
        elif fields[0] == cpu:
            stale = len(fields) < 2 or fields[1] != identity
        else:
            stale = fields[0] not in CPU_CLASSES  # the old layout: IDENTITY.onnx, IDENTITY.no-ranges
        if stale:
            old.unlink(missing_ok=True)


def _abandoned(tmp: Path) -> bool:
    """A ``COPY.PID.tmp`` is a build in progress while its writer lives (another process starting
    on the same model): only a dead writer's leftover, or a day-old one, is swept."""
    try:
        pid = int(tmp.name.rsplit(".", 2)[-2])
        if time.time() - tmp.stat().st_mtime > ABANDONED_TMP_S:
            return True
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    except (ValueError, IndexError):  # not named by our quantiser: not ours to keep
        return True
    except OSError:  # gone already
        return False
    return False


def _read_info(path: Path):
    """The model's metadata without an inference session (onnx parses the file once)."""
    import onnx

    from .artifact import info_of

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: a damaged or foreign file
        raise ModelError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    return info_of(model, path)


def int8_model(path: Path, cache_dir: Path, required: bool) -> tuple[Path | None, str]:
    """(the static int8 copy of ``path`` for this CPU, built and checked on first use, or None;
    why there is none). None when the model carries no int8 calibration, or when no recipe's copy
    agrees with fp32 on this machine, and ``required`` is false; an error when it is true."""
    from .quantize import cpu_class, recipe_for

    cpu = cpu_class()
    refused = []
    for recipe in dict.fromkeys((recipe_for(cpu), "u8u8")):  # the CPU's recipe, then the one that never saturates
        copy = _int8_copy(path, cache_dir, recipe, cpu)
        if copy.is_file():
            return copy, ""
        try:
            built, why = _build_int8(path, copy, recipe, required)
        except ModelError:
            raise
        except (OSError, SpkrecError) as exc:  # a cache that cannot be written: auto runs fp32, asked-for int8 says why
            why = getattr(exc, "strerror", None) or exc
            if required:
                raise ModelError(f"cannot write the int8 copy of {path} to {copy.parent}: {why}") from None
            return None, f"the int8 copy cannot be cached in {copy.parent} ({why})"
        if built is not None:
            return built, ""
        if why == NO_RANGES:
            return None, why
        refused.append(f"{recipe} {why}")
    note = f"int8 disagrees with fp32 on this CPU ({cpu}): cosine {', '.join(refused)} < {AGREEMENT}"
    if required:
        raise ModelError(f"{path}: {note}: use [model] precision = \"auto\" or \"fp32\"")
    return None, note


def _build_int8(path: Path, copy: Path, recipe: str, required: bool) -> tuple[Path | None, str]:
    """Quantise with ``recipe`` and keep the copy only if it agrees with fp32 here; a verdict file
    remembers a refusal (the measured cosine) so the next start does not quantise again."""
    verdict = copy.with_suffix(".verdict")
    if verdict.is_file():
        return None, verdict.read_text().strip()
    info = _read_info(path)
    if info.precision == "int8":
        return path, ""  # already quantised
    if not info.int8_ranges:
        if required:
            raise ModelError(f"{path} carries no int8 calibration (exported before it existed): "
                             "python -m spkrec.training.int8 stamps it, or use [model] precision = \"fp32\"")
        return _refuse(verdict, NO_RANGES)
    from .quantize import quantize_static_int8

    quantize_static_int8(path, copy, info.int8_ranges, recipe)
    cosine = agreement(path, copy, info)
    if cosine < AGREEMENT:
        copy.unlink(missing_ok=True)
        return _refuse(verdict, f"{cosine:.3f}")
    _drop_stale(copy)
    return copy, ""


def _refuse(verdict: Path, why: str) -> tuple[None, str]:
    private_dir(verdict.parent)
    verdict.write_text(why + "\n")
    _drop_stale(verdict)
    return None, why


def agreement(original: Path, copy: Path, info) -> float:
    """The least cosine between the two files' embeddings of the check windows, on this CPU."""
    from .engine import Engine

    windows = check_windows(info.sample_rate, info.window_samples)
    reference = Engine(original, provider="cpu").embed(windows)
    return min_cosine(reference, Engine(copy, provider="cpu", precision="int8").embed(windows))


def choose(path: Path, wanted: str, provider: str, cache_dir: Path) -> Choice:
    """The file to run, its precision and any note, for ``wanted`` on ``provider`` ('cpu' or 'cuda')."""
    if wanted not in PRECISIONS:
        raise ModelError(f"unknown precision '{wanted}' (choose {', '.join(PRECISIONS)})")
    if wanted == "fp32":
        return Choice(path, "fp32")
    if wanted == "int8" or (wanted == "auto" and provider == "cpu"):
        copy, note = int8_model(path, cache_dir, required=wanted == "int8")
        return Choice(copy, "int8") if copy is not None else Choice(path, "fp32", note)
    half = path.with_name(f"{path.stem}.fp16.onnx")
    if half.is_file():
        return Choice(half, "fp16")
    if wanted == "fp16":
        raise ModelError(f"no fp16 copy of {path} ({half.name}): `spkrec export RUN --fp16` writes one")
    return Choice(path, "fp32")
