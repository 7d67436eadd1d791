"""Every module of every spkrec package imports: a broken or drifted dependency is one named
failure here (``test_module_imports[spkrec.training.features]``), never a collection error that
stops the whole run."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"daemon": "spkrec.daemon", "models": "spkrec.models", "training": "spkrec.training"}


def _modules() -> list[str]:
    """Found from the source tree, not by importing: collection itself must not fail."""
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join((package, *parts)))
    return found


MODULES = _modules()


def test_every_package_is_found():
    assert {"spkrec.daemon.cli", "spkrec.models.engine", "spkrec.training.torchaudio_ops"} <= set(MODULES)
    assert len(MODULES) > 60


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_torchaudio_is_used_through_one_module():
    """torchaudio is in maintenance upstream: only training/torchaudio_ops.py may import it, so
    the next break costs one file (README, "Locked installs")."""
    imports = re.compile(r"^\s*(?:import|from)\s+torchaudio\b", re.MULTILINE)
    users = [path.relative_to(REPO).as_posix() for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
             if imports.search(path.read_text())]
    assert users == ["training/torchaudio_ops.py"], users
