"""Typed configuration: dataclasses, loaded from TOML, validated with errors that name the key.

This module is the loader, the lookup order and the validation, in one place, and owns the
sections of the runtime contract (model, audio, VAD, stream, decision, UI, gallery, enrollment,
calibration, paths). The parts own theirs (``[door]``, ``[log]``, ``[metrics]``, ``[meeting]``,
``[train]``) and register them under the ``spkrec.config`` entry-point group (models.options):
``Config`` is assembled from both at import, without importing a part by name.

The dataclass defaults are the packaged defaults; the top-level ``config.toml`` states the same
values with a comment per key (a test keeps the two equal). A user's file need only hold the
keys it changes: it is merged over these defaults.

Where the file is looked for is ``LOOKUP`` (the one place that says it; help texts and ``spkrec
config`` print it): the first one found is merged over the defaults; with none, the defaults
alone. A ``config.toml`` that happens to sit in the working directory is never read: a service
started from some folder must not change its behaviour because of a file it was not pointed at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field, make_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from .engine import PROVIDERS
from .errors import ConfigError
from .options import GROUP, Section, option
from .precision import PRECISIONS

SYSTEM_CONFIG = Path("/etc/spkrec/config.toml")
FLAG = "command line"  # the origin of a value set by a flag


@dataclass
class ModelConfig:
    path: str = option("")
    provider: str = option("auto", choices=("auto", *PROVIDERS))
    threads: int = option(0, lo=0, hi=256)
    io_binding: bool = option(False)
    precision: str = option("auto", choices=PRECISIONS)


@dataclass
class AudioConfig:
    device: str = option("")
    stdin_rate: int = option(16000, lo=8000, hi=192000)
    block_s: float = option(0.1, lo=0.01, hi=1.0)
    queue_s: float = option(10.0, lo=0.5, hi=600.0)
    reconnect_max_s: float = option(10.0, lo=0.1, hi=600.0)


@dataclass
class VadConfig:
    aggressiveness: int = option(2, lo=0, hi=3)
    frame_ms: int = option(30, choices=(10, 20, 30))
    min_voiced_ratio: float = option(0.5, lo=0.0, hi=1.0)


@dataclass
class StreamConfig:
    window_s: float = option(0.0, lo=0.0, hi=10.0)
    hop_s: float = option(0.0, lo=0.0, hi=10.0)
    smoothing: int = option(3, lo=1, hi=50)
    batch_wait_s: float = option(0.1, lo=0.0, hi=1.0)
    labels: str = option("window", choices=("window", "turn"))


@dataclass
class UiConfig:
    refresh_hz: float = option(8.0, lo=1.0, hi=30.0)
    timeline_s: float = option(60.0, lo=10.0, hi=600.0)


@dataclass
class DecisionConfig:
    operating_point: str = option("auto", choices=("auto", "calibrated", "eer", "far1", "fixed"))
    threshold: float = option(0.5, lo=-1.0, hi=1.0)
    margin: float = option(0.0, lo=0.0, hi=2.0)
    trained_speakers: bool = option(True)


@dataclass
class CalibrateConfig:
    target_far: float = option(0.01, lo=0.0001, hi=0.5)
    target_visit_far: float = option(0.01, lo=0.0, hi=0.5)
    holdout: float = option(0.25, lo=0.05, hi=0.75)


@dataclass
class GalleryConfig:
    path: str = option("")


@dataclass
class EnrollConfig:
    min_voiced_s: float = option(20.0, lo=1.0, hi=3600.0)
    max_clipped: float = option(0.001, lo=0.0, hi=1.0)
    min_level_db: float = option(-45.0, lo=-120.0, hi=0.0)
    same_voice_cosine: float = option(0.0, lo=-1.0, hi=1.0)


@dataclass
class PathsConfig:
    cache_dir: str = option("")


# The sections of the runtime contract, in the order `spkrec config` prints them; the parts'
# own sections (entry-point group ``spkrec.config``) follow, then ``[inputs]``.
CORE = (Section("model", ModelConfig), Section("audio", AudioConfig), Section("vad", VadConfig),
        Section("stream", StreamConfig), Section("decision", DecisionConfig), Section("ui", UiConfig),
        Section("gallery", GalleryConfig),
        Section("enroll", EnrollConfig, gone={"enroll.min_consistency": "the one-voice check splits the windows in "
                                              "two now; its bar is enroll.same_voice_cosine (0 = the model's own)"}),
        Section("calibrate", CalibrateConfig),
        Section("paths", PathsConfig))


def registered() -> tuple[Section, ...]:
    """The parts' sections, by name; the first registration of a name wins (an editable
    install and a built one side by side register the same part twice)."""
    found: dict[str, Section] = {}
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if entry.name not in found:
            found[entry.name] = entry.load()
    return tuple(found.values())


SECTIONS = CORE + registered()


class _Settings:
    """What every Config knows besides its sections: where it came from and where its files live."""

    def __post_init__(self) -> None:
        self.file: Path | None = None  # the config file merged over the defaults, if any
        self.origins: dict[str, str] = {}  # dotted key -> the file or flag that set it; absent = the default

    def cache_dir(self) -> Path:
        """Where converted weights, decoded demo audio and the default model are kept."""
        if self.paths.cache_dir:
            return Path(self.paths.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "spkrec"

    def gallery_path(self) -> Path:
        """The enrolled-speaker database: ``[gallery] path``, else in the user's data folder."""
        if self.gallery.path:
            return Path(self.gallery.path).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "spkrec" / "gallery.sqlite"


def _section_field(section: Section) -> tuple[str, type, Any]:
    return section.name, section.kind, field(default_factory=section.kind)


# One named input of a daemon that serves several (``[inputs.NAME]``): its device or file, and
# for each section that allows it, keys that override that section for this input only.
InputConfig = make_dataclass("InputConfig", [
    ("device", str, option("")), ("file", str, option("")),
    *[(s.name, dict, field(default_factory=dict, metadata={"overrides": s.name})) for s in SECTIONS if s.per_input]])

Config = make_dataclass("Config", [*map(_section_field, SECTIONS),
                                   ("inputs", dict, field(default_factory=dict, metadata={"table_of": InputConfig}))],
                        bases=(_Settings,))
Config.__doc__ = "The whole configuration: one attribute per section, ``inputs`` a name -> InputConfig table."
Config.__module__ = InputConfig.__module__ = __name__


def choices(key: str) -> tuple:
    """The values a dotted key accepts (``"model.precision"``), from its field: what a flag that
    sets the key offers, so the list is written once."""
    section, name = key.split(".")
    kind = get_type_hints(Config)[section]
    return next(f for f in dataclasses.fields(kind) if f.name == name).metadata["choices"]


def _check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Coerce and validate one leaf value, raising ConfigError that names ``key``."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    elif hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        if meta.get("length") is not None and len(value) != meta["length"]:
            raise ConfigError(f"config key '{key}' must have {meta['length']} items, got {len(value)}")
    if meta.get("choices") and value not in meta["choices"]:
        options = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"config key '{key}' must be one of {options}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"config key '{key}' must be between {lo} and {hi}, got {value!r}")
    return value


_GONE = {key: why for section in SECTIONS for key, why in section.gone.items()}


def _merge(obj: Any, data: Mapping[str, Any], prefix: str, origins: dict | None = None, origin: str = "") -> None:
    """Write ``data`` into dataclass ``obj`` in place, validating every key; each key set is
    recorded in ``origins`` as coming from ``origin`` (what `spkrec config` shows)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a table")
    hints = get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = prefix + name
        gone = _GONE.get(key) or _GONE.get(key.split(".", 2)[-1] if key.startswith("inputs.") else "")
        if gone:
            raise ConfigError(f"config key '{key}' is gone: {gone}")
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key}' (known here: {known})")
        current = getattr(obj, name)
        meta = fields[name].metadata
        if meta.get("table_of"):
            setattr(obj, name, _named_tables(meta["table_of"], value, key))
        elif meta.get("overrides"):
            setattr(obj, name, _overrides_of(meta["overrides"], value, key))
        elif dataclasses.is_dataclass(current):
            _merge(current, value, key + ".", origins, origin)
            continue
        else:
            setattr(obj, name, _check_value(key, value, hints[name], fields[name].metadata))
        if origins is not None:
            origins[key] = origin


def is_input_name(name: str) -> bool:
    """An input's name ([inputs.NAME], --device NAME=..., events' "stream"): letters, digits, '-', '_'."""
    return bool(name) and name.replace("-", "").replace("_", "").isalnum()


def _named_tables(kind: type, data: Any, key: str) -> dict:
    """``[inputs.NAME]`` tables: one validated ``kind`` per name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{key}' must be a table of named tables ([{key}.NAME])")
    tables = {}
    for name, table in data.items():
        if not is_input_name(name):
            raise ConfigError(f"config key '{key}.{name}': names use letters, digits, '-' and '_'")
        tables[name] = kind()
        _merge(tables[name], table, f"{key}.{name}.")
    return tables


def _overrides_of(section: str, data: Any, key: str) -> dict:
    """Keys of another section (``[door]``) to apply over it for one input, validated like it."""
    probe = getattr(Config(), section)
    _merge(probe, data, key + ".")
    return {name: getattr(probe, name) for name in data}


def _validate_relations(cfg: Config) -> None:
    """Checks that span keys, the core's here and each part's by its section's ``validate``."""
    if cfg.stream.window_s and cfg.stream.hop_s > cfg.stream.window_s:
        raise ConfigError(f"config key 'stream.hop_s' ({cfg.stream.hop_s}) must not exceed 'stream.window_s' "
                          f"({cfg.stream.window_s})")
    for name, entry in cfg.inputs.items():
        if bool(entry.device) == bool(entry.file):
            raise ConfigError(f"config table 'inputs.{name}' needs exactly one of 'device' or 'file'")
    for section in SECTIONS:
        if section.validate is not None:
            section.validate(cfg)


# Where a config file is looked for, in order; a place that is named (a flag, a variable) must exist.
LOOKUP = ("--config PATH", "$SPKREC_CONFIG", "$XDG_CONFIG_HOME/spkrec/config.toml", str(SYSTEM_CONFIG))


def lookup_text() -> str:
    return ", ".join(LOOKUP) + " (the first that exists)"


def candidates(explicit: str | Path | None = None) -> list[tuple[str, Path | None, bool]]:
    """(place in ``LOOKUP``, the path it names here or None, whether it must exist), in order."""
    env = os.environ.get("SPKREC_CONFIG")
    return [(LOOKUP[0], Path(explicit).expanduser() if explicit else None, True),
            (LOOKUP[1], Path(env).expanduser() if env else None, True),
            (LOOKUP[2], user_config(), False), (LOOKUP[3], SYSTEM_CONFIG, False)]


def find_config(explicit: str | Path | None = None) -> Path | None:
    """The first configuration file in ``LOOKUP``, or None."""
    for place, path, named in candidates(explicit):
        if path is None:
            continue
        if path.is_file():
            return path
        if named:
            raise ConfigError(f"config file named by {place.split()[0]} not found: {path}")
    return None


def user_config() -> Path:
    """``$XDG_CONFIG_HOME/spkrec/config.toml``, XDG's default being ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "spkrec" / "config.toml"


def load_config(explicit: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the user's file, then CLI overrides (``{"train.epochs": 10}``)."""
    cfg = Config()
    path = find_config(explicit)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        _merge(cfg, data, "", cfg.origins, str(path))
        cfg.file = path
    apply_overrides(cfg, overrides or {})
    return cfg


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> None:
    """Apply dotted-key overrides (CLI flags) with the same validation as the file."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        *sections, name = dotted.split(".")
        nested: dict[str, Any] = {name: value}
        for section in reversed(sections):
            nested = {section: nested}
        _merge(cfg, nested, "", cfg.origins, FLAG)
    _validate_relations(cfg)


def as_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: Mapping[str, Any]) -> Config:
    """A Config from a plain dict (as saved next to a training run), validated like a file."""
    cfg = Config()
    _merge(cfg, data, "")
    _validate_relations(cfg)
    return cfg


def to_toml(cfg: Config, origins: bool = True) -> str:
    """The configuration as TOML that loads back to the same values, each key followed by where
    its value came from (``# default``, a file, the command line) when ``origins``."""
    lines: list[str] = []
    _toml_table(lines, "", dataclasses.asdict(cfg), cfg.origins if origins else None)
    return "\n".join(lines).strip() + "\n"


def _toml_table(lines: list[str], prefix: str, table: Mapping[str, Any], origins: Mapping[str, str] | None) -> None:
    leaves = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    if prefix and (leaves or not table):
        lines += ["", f"[{prefix}]"]
    for name, value in leaves.items():
        text = f"{name} = {_toml_value(value)}"
        if origins is not None:
            key = prefix + "." + name if prefix else name
            source = next((origins[k] for k in _ancestors(key) if k in origins), "default")
            text = f"{text:<40} # {source}"
        lines.append(text)
    for name, value in table.items():
        if isinstance(value, Mapping):
            _toml_table(lines, f"{prefix}.{name}" if prefix else name, value, origins)


def _ancestors(key: str) -> list[str]:
    """'inputs.front.door.wins' -> itself, then 'inputs.front.door', 'inputs.front', 'inputs'."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
