"""The training extra checked the way ``spkrec doctor`` needs it: each of torch, torchaudio and
torchvision imported and run once, its version held against the exact pin spkrec was built
with. It runs as ``python -m spkrec.training.selfcheck`` in a process of its own, so the daemon
never imports torch and a library that crashes on load takes only this process down.

Prints one JSON list: ``[{"name", "ok", "version", "detail", "fix"}]``.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from typing import Callable

PACKAGES = ("torch", "torchaudio", "torchvision")


def pins() -> dict[str, str]:
    """{package: exact version} of the ``train`` extra, read from spkrec's own metadata (the
    pyproject's pins, one place for them)."""
    found = {}
    for requirement in metadata.requires("spkrec") or []:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*==\s*([^;\s]+)\s*;.*extra\s*==\s*['\"]train['\"]", requirement)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def _torch() -> str:
    import torch

    value = float(torch.ones(3) @ torch.ones(3))
    if value != 3.0:
        raise RuntimeError(f"a dot product gave {value}")
    return "a tensor op ran"


def _torchaudio() -> str:
    from spkrec.training.torchaudio_ops import self_check

    return self_check()


def _torchvision() -> str:
    import torch
    import torchvision

    keep = torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8]), 0.5)
    if keep.tolist() != [0]:
        raise RuntimeError(f"nms kept {keep.tolist()}")
    return "a C++ operator (nms) ran"


RUNS: dict[str, Callable[[], str]] = {"torch": _torch, "torchaudio": _torchaudio, "torchvision": _torchvision}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:220] if text else ''}"


def check(name: str, pinned: str | None) -> dict:
    """One package: installed, the pinned build, and one tiny op that loads its native code."""
    version = _installed(name)
    fix = f"pip install '{name}=={pinned}'" if pinned else f"pip install '{name}'"
    result = {"name": name, "ok": False, "version": version, "detail": "", "fix": ""}
    if version is None:
        result.update(detail="not installed", fix=f"{fix} (or pip install 'spkrec[train]')")
        return result
    try:
        ran = RUNS[name]()
    except Exception as exc:  # OSError from a native library, ImportError, RuntimeError of an op
        why = _first_line(exc)
        if "undefined symbol" in why or "Could not load" in why or "does not exist" in why:
            why = f"{why} (a build made for another torch)"
        result.update(detail=why, fix=f"{fix}, the build that matches torch {pins().get('torch', '')}".rstrip())
        return result
    if pinned and version.split("+")[0] != pinned:
        result.update(detail=f"{ran}, but spkrec pins {name}=={pinned}", fix=fix)
        return result
    result.update(ok=True, detail=ran)
    return result


def main() -> None:
    pinned = pins()
    print(json.dumps([check(name, pinned.get(name)) for name in PACKAGES]))


if __name__ == "__main__":
    main()
