"""The ``[door]`` section (and ``[inputs.NAME.door]``): the door's policy, its action and its record."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from spkrec.models.errors import ConfigError
from spkrec.models.options import Section, option


@dataclass
class DoorConfig:
    authorized: list = option([])
    command: list = option([])
    url: str = option("")
    timeout_s: float = option(5.0, lo=0.1, hi=600.0)
    cooldown_s: float = option(10.0, lo=0.0, hi=86400.0)
    audit_log: str = option("")
    min_voiced_s: float = option(1.0, lo=0.0, hi=60.0)
    visit_s: float = option(8.0, lo=2.0, hi=30.0)
    every_s: float = option(1.0, lo=0.25, hi=10.0)
    max_visit_s: float = option(20.0, lo=2.0, hi=600.0)
    max_delay_s: float = option(3.0, lo=0.1, hi=600.0)
    secret_file: str = option("")
    secret_env: str = option("SPKREC_DOOR_SECRET")
    ca_file: str = option("")
    second_factor_command: list = option([])
    second_factor_url: str = option("")
    second_factor_timeout_s: float = option(15.0, lo=0.1, hi=600.0)


def door_for(cfg: Any, stream: str) -> DoorConfig:
    """``[door]`` with this input's ``[inputs.NAME.door]`` keys over it: each door its policy."""
    entry = cfg.inputs.get(stream)
    return dataclasses.replace(cfg.door, **entry.door) if entry is not None else cfg.door


def rule_of(door: DoorConfig, margin: float) -> dict:
    """What a door's threshold is calibrated for: who it opens for and how a visit is heard.
    A stored calibration applies to a door only if this is the same (models.thresholds)."""
    return {"authorized": sorted(door.authorized), "min_voiced_s": door.min_voiced_s, "visit_s": door.visit_s,
            "every_s": door.every_s, "max_visit_s": door.max_visit_s, "margin": margin}


def rule_key(rule: dict) -> str:
    return json.dumps(rule, sort_keys=True)


def validate(cfg: Any) -> None:
    """Every door (the global one and each input's) must be a policy that can run."""
    for prefix, door in [("door", cfg.door)] + [(f"inputs.{n}.door", door_for(cfg, n)) for n in cfg.inputs]:
        if door.visit_s > door.max_visit_s:
            raise ConfigError(f"config key '{prefix}.visit_s' ({door.visit_s}) must not exceed "
                              f"'{prefix}.max_visit_s' ({door.max_visit_s})")
        for key in ("authorized", "command", "second_factor_command"):
            if not all(isinstance(v, str) and v for v in getattr(door, key)):
                raise ConfigError(f"config key '{prefix}.{key}' must be a list of non-empty strings")
        for key in ("url", "second_factor_url"):
            url = getattr(door, key)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"config key '{prefix}.{key}' must be an http:// or https:// URL, got {url!r}")


_VISITS = "the door decides on the visit's one-pass embedding now (README, The door hook); delete the line"
SECTION = Section("door", DoorConfig, validate, per_input=True,
                  gone={"door.wins": _VISITS, "door.of_last": _VISITS})
