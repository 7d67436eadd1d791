"""What a configuration section is made of, so that each part can own its own.

A part (the door, the service, meetings, training) declares its ``[section]`` as a dataclass of
``option`` fields and registers a ``Section`` under the ``spkrec.config`` entry-point group;
``models.config`` finds it there and validates it like any other. The loader never imports the
part: the direction of the house (daemon -> models <- training) holds, and a new part adds a
section without editing the loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

GROUP = "spkrec.config"  # the entry-point group sections are registered under


def option(default: Any, *, lo: float | None = None, hi: float | None = None,
           choices: tuple | None = None, length: int | None = None):
    """A dataclass field with the range or choices the loader validates it against."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "length": length}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Section:
    """A ``[name]`` table owned by a part.

    ``validate`` runs after every file and flag is merged and sees the whole configuration, for
    checks that span keys (a door's per-input overrides, a range's order). ``per_input`` lets
    ``[inputs.NAME.<name>]`` override the section's keys for one input. ``gone`` maps removed
    dotted keys to what to do instead, so an old file fails with a message that helps.
    """

    name: str
    kind: type
    validate: Callable[[Any], None] | None = None
    per_input: bool = False
    gone: Mapping[str, str] = field(default_factory=dict)
