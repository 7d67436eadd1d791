"""Which copy of a model runs: fp32, static int8 on a CPU, fp16 on CUDA (``[model] precision``).

``auto`` picks what is fastest where the model runs at no measurable loss (README, "CPU: static int8"):
the static int8 copy on the CPU provider, built from the ranges the model carries
(``models.quantize``) and cached; an fp16 copy next to the model (``MODEL.fp16.onnx``, written by
``spkrec export --fp16``) on CUDA. Where a model has neither, ``auto`` runs it as it is, and
says so in the precision it reports; asking for ``int8`` or ``fp16`` by name and not getting it
is an error, never a quiet substitute.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ModelError

PRECISIONS = ("auto", "fp32", "int8", "fp16")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _int8_copy(path: Path, cache_dir: Path) -> Path:
    """Where the int8 copy of this exact file lives: keyed by the file's identity (path, size,
    modification time), so a start with a warm cache reads no fp32 metadata at all."""
    from .quantize import QUANTIZER

    stat = path.stat()
    where = _digest(str(path.resolve()))
    return cache_dir / "int8" / f"{path.stem}-{where}-{_digest(f'{stat.st_size}|{stat.st_mtime_ns}|{QUANTIZER}')}.onnx"


def _drop_stale(copy: Path) -> None:
    """Copies of an earlier version of the same file (an upgrade replaced it) are removed, so the
    cache holds one copy per model path."""
    stem = copy.name.rsplit("-", 1)[0]
    for old in copy.parent.glob(f"{stem}-*"):
        if old.name != copy.name and old.suffix in (".onnx", ".no-ranges"):
            old.unlink(missing_ok=True)


def _read_info(path: Path):
    """The model's metadata without an inference session (onnx parses the file once)."""
    import onnx

    from .artifact import info_of

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: a damaged or foreign file
        raise ModelError(f"{path} is not a loadable ONNX model: {str(exc).splitlines()[0][:200]}") from None
    return info_of(model, path)


def int8_model(path: Path, cache_dir: Path, required: bool) -> Path | None:
    """The static int8 copy of ``path``, built on first use; None when the model carries no int8
    calibration and ``required`` is false."""
    copy = _int8_copy(path, cache_dir)
    if copy.is_file():
        return copy
    try:
        return _build_int8(path, copy, required)
    except OSError as exc:  # a cache folder that cannot be written: auto runs fp32, asked-for int8 says why
        if required:
            raise ModelError(f"cannot write the int8 copy of {path} to {copy.parent}: {exc.strerror or exc}") from None
        return None


def _build_int8(path: Path, copy: Path, required: bool) -> Path | None:
    absent = copy.with_suffix(".no-ranges")
    if absent.is_file() and not required:
        return None
    info = _read_info(path)
    if info.precision == "int8":
        return path  # already quantised
    if not info.int8_ranges:
        if required:
            raise ModelError(f"{path} carries no int8 calibration (exported before it existed): "
                             "python -m spkrec.training.int8 stamps it, or use [model] precision = \"fp32\"")
        absent.parent.mkdir(parents=True, exist_ok=True)
        absent.touch()
        _drop_stale(absent)
        return None
    from .quantize import quantize_static_int8

    quantize_static_int8(path, copy, info.int8_ranges)
    _drop_stale(copy)
    return copy


def choose(path: Path, wanted: str, provider: str, cache_dir: Path) -> tuple[Path, str]:
    """(the file to run, its precision) for ``wanted`` on ``provider`` ('cpu' or 'cuda')."""
    if wanted not in PRECISIONS:
        raise ModelError(f"unknown precision '{wanted}' (choose {', '.join(PRECISIONS)})")
    if wanted == "fp32":
        return path, "fp32"
    if wanted == "int8" or (wanted == "auto" and provider == "cpu"):
        copy = int8_model(path, cache_dir, required=wanted == "int8")
        return (copy, "int8") if copy is not None else (path, "fp32")
    half = path.with_name(f"{path.stem}.fp16.onnx")
    if half.is_file():
        return half, "fp16"
    if wanted == "fp16":
        raise ModelError(f"no fp16 copy of {path} ({half.name}): `spkrec export RUN --fp16` writes one")
    return path, "fp32"
