"""The base speaker model that ships inside the package: a general encoder, no trained speakers.

It is what every command uses when no model is configured, so `spkrec enroll` works for any
voice on a fresh install, with no training and no torch. How it was made, on what data and how
well it does: README, "The base model" (its fingerprint is checked against that card by a test).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ModelError

FILE_NAME = "spkrec-base.onnx"
# The shipped file's SHA-256: `spkrec doctor` finds a damaged install with it (a test holds it to the file).
SHA256 = "281c7fa81df06d1502bb4fa3ed95519ddff7d5e7dcd3ed0c663a603f2a22b557"


def base_model_path() -> Path:
    """The shipped ONNX file; a clear error if an install lost it (it is package data)."""
    path = Path(str(resources.files("spkrec.models").joinpath("base", FILE_NAME)))
    if not path.is_file():
        raise ModelError(f"the shipped base model is missing from this install ({path}): reinstall spkrec "
                         "or pass --model PATH")
    return path
