"""Typed configuration: dataclasses, loaded from TOML, validated with errors that name the key.

The dataclass defaults below are the packaged defaults; the top-level ``config.toml`` states
the same values with a comment per key (a test keeps the two equal). A user's file need only
hold the keys it changes: it is merged over these defaults.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from .engine import PROVIDERS
from .errors import ConfigError
from .precision import PRECISIONS

SYSTEM_CONFIG = Path("/etc/spkrec/config.toml")
FLAG = "command line"  # the origin of a value set by a flag


def _opt(default: Any, *, lo: float | None = None, hi: float | None = None,
         choices: tuple | None = None, length: int | None = None):
    """A dataclass field with the range or choices it is validated against."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "length": length}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    path: str = _opt("")
    provider: str = _opt("auto", choices=("auto", *PROVIDERS))
    threads: int = _opt(0, lo=0, hi=256)
    io_binding: bool = _opt(False)
    precision: str = _opt("auto", choices=PRECISIONS)


@dataclass
class AudioConfig:
    device: str = _opt("")
    stdin_rate: int = _opt(16000, lo=8000, hi=192000)
    block_s: float = _opt(0.1, lo=0.01, hi=1.0)
    queue_s: float = _opt(10.0, lo=0.5, hi=600.0)
    reconnect_max_s: float = _opt(10.0, lo=0.1, hi=600.0)


@dataclass
class VadConfig:
    aggressiveness: int = _opt(2, lo=0, hi=3)
    frame_ms: int = _opt(30, choices=(10, 20, 30))
    min_voiced_ratio: float = _opt(0.5, lo=0.0, hi=1.0)


@dataclass
class StreamConfig:
    window_s: float = _opt(0.0, lo=0.0, hi=10.0)
    hop_s: float = _opt(0.0, lo=0.0, hi=10.0)
    smoothing: int = _opt(3, lo=1, hi=50)
    batch_wait_s: float = _opt(0.1, lo=0.0, hi=1.0)


@dataclass
class UiConfig:
    refresh_hz: float = _opt(8.0, lo=1.0, hi=30.0)
    timeline_s: float = _opt(60.0, lo=10.0, hi=600.0)


@dataclass
class DecisionConfig:
    operating_point: str = _opt("auto", choices=("auto", "calibrated", "eer", "far1", "fixed"))
    threshold: float = _opt(0.5, lo=-1.0, hi=1.0)
    margin: float = _opt(0.0, lo=0.0, hi=2.0)
    trained_speakers: bool = _opt(True)


@dataclass
class MeetingConfig:
    max_speakers: int = _opt(20, lo=1, hi=200)
    min_speaker_s: float = _opt(2.0, lo=0.0, hi=60.0)
    max_pause_s: float = _opt(1.0, lo=0.0, hi=10.0)
    min_turn_s: float = _opt(0.5, lo=0.0, hi=10.0)
    context_s: float = _opt(30.0, lo=5.0, hi=300.0)


@dataclass
class CalibrateConfig:
    target_far: float = _opt(0.01, lo=0.0001, hi=0.5)
    target_visit_far: float = _opt(0.01, lo=0.0, hi=0.5)
    holdout: float = _opt(0.25, lo=0.05, hi=0.75)


@dataclass
class GalleryConfig:
    path: str = _opt("")


@dataclass
class EnrollConfig:
    min_voiced_s: float = _opt(20.0, lo=1.0, hi=3600.0)
    max_clipped: float = _opt(0.001, lo=0.0, hi=1.0)
    min_level_db: float = _opt(-45.0, lo=-120.0, hi=0.0)
    min_consistency: float = _opt(0.0, lo=-1.0, hi=1.0)


@dataclass
class DoorConfig:
    authorized: list = _opt([])
    command: list = _opt([])
    url: str = _opt("")
    timeout_s: float = _opt(5.0, lo=0.1, hi=600.0)
    cooldown_s: float = _opt(10.0, lo=0.0, hi=86400.0)
    audit_log: str = _opt("")
    wins: int = _opt(3, lo=1, hi=100)
    of_last: int = _opt(4, lo=1, hi=100)
    min_voiced_s: float = _opt(1.5, lo=0.0, hi=60.0)
    max_delay_s: float = _opt(3.0, lo=0.1, hi=600.0)
    secret_file: str = _opt("")
    secret_env: str = _opt("SPKREC_DOOR_SECRET")
    ca_file: str = _opt("")
    second_factor_command: list = _opt([])
    second_factor_url: str = _opt("")
    second_factor_timeout_s: float = _opt(15.0, lo=0.1, hi=600.0)


@dataclass
class LogConfig:
    level: str = _opt("info", choices=("debug", "info", "warning", "error"))


@dataclass
class MetricsConfig:
    listen: str = _opt("")
    stale_s: float = _opt(30.0, lo=1.0, hi=86400.0)


@dataclass
class InputConfig:
    """One named input of a daemon that serves several (``[inputs.NAME]``)."""

    device: str = _opt("")
    file: str = _opt("")
    door: dict = field(default_factory=dict, metadata={"overrides": "door"})  # keys of [door], for this input


@dataclass
class PathsConfig:
    cache_dir: str = _opt("")


@dataclass
class AugmentConfig:
    noise_prob: float = _opt(0.5, lo=0.0, hi=1.0)
    snr_db: list = _opt([5.0, 20.0], length=2)
    reverb_prob: float = _opt(0.3, lo=0.0, hi=1.0)
    rt60_s: list = _opt([0.2, 0.8], length=2)
    gain_db: float = _opt(6.0, lo=0.0, hi=40.0)
    spec_augment: bool = _opt(True)
    freq_mask_bins: int = _opt(10, lo=0, hi=80)
    time_mask_frames: int = _opt(20, lo=0, hi=400)


@dataclass
class TrainConfig:
    batch_size: int = _opt(32, lo=1, hi=4096)
    epochs: int = _opt(5, lo=1, hi=10000)
    min_steps: int = _opt(300, lo=0, hi=10_000_000)
    steps_per_speaker: int = _opt(10, lo=0, hi=100_000)
    optimizer: str = _opt("adamw", choices=("adamw",))
    lr: float = _opt(1e-3, lo=0.0, hi=1.0)
    weight_decay: float = _opt(0.0, lo=0.0, hi=1.0)
    scheduler: str = _opt("cosine", choices=("cosine", "constant"))
    warmup_steps: int = _opt(0, lo=0, hi=1_000_000)
    grad_clip: float = _opt(0.0, lo=0.0, hi=1e6)
    loss: str = _opt("aam", choices=("aam", "softmax"))
    aam_margin: float = _opt(0.2, lo=0.0, hi=1.0)
    aam_scale: float = _opt(30.0, lo=1.0, hi=100.0)
    embedding_dim: int = _opt(256, lo=8, hi=4096)
    sample_rate: int = _opt(16000, choices=(8000, 16000))
    window_s: float = _opt(2.0, lo=0.5, hi=10.0)
    hop_s: float = _opt(0.5, lo=0.1, hi=10.0)
    n_mels: int = _opt(80, lo=20, hi=128)
    pretrained: str = _opt("speaker")
    stem_pool: str = _opt("none", choices=("none", "time", "2x2"))
    pooling: str = _opt("stats", choices=("stats", "avg"))
    freeze_layers: int = _opt(0, lo=0, hi=4)
    val_fraction: float = _opt(0.2, lo=0.0, hi=0.9)
    val_voices: int = _opt(-1, lo=-1, hi=100_000)
    seed: int = _opt(0, lo=0, hi=2**31 - 1)
    device: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = _opt(True)
    workers: int = _opt(-1, lo=-1, hi=64)
    cache_audio: bool = _opt(True)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    enroll: EnrollConfig = field(default_factory=EnrollConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    meeting: MeetingConfig = field(default_factory=MeetingConfig)
    door: DoorConfig = field(default_factory=DoorConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inputs: dict = field(default_factory=dict, metadata={"table_of": InputConfig})  # name -> InputConfig

    def __post_init__(self) -> None:
        self.file: Path | None = None  # the config file merged over the defaults, if any
        self.origins: dict[str, str] = {}  # dotted key -> the file or flag that set it; absent = the default

    def door_for(self, stream: str) -> DoorConfig:
        """``[door]`` with this input's ``[inputs.NAME.door]`` keys over it: each door its policy."""
        entry = self.inputs.get(stream)
        return dataclasses.replace(self.door, **entry.door) if entry is not None else self.door

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


_CLUSTERING = "meeting clustering takes its thresholds from the model (README, Meeting mode); delete the line"
_REMOVED = {"meeting.guest_threshold": _CLUSTERING, "meeting.merge_threshold": _CLUSTERING,
            "meeting.max_guests": "it is meeting.max_speakers now",
            "meeting.change_windows": "turn boundaries come from 0.1-s frames now; delete the line"}


def _merge(obj: Any, data: Mapping[str, Any], prefix: str, origins: dict | None = None, origin: str = "") -> None:
    """Write ``data`` into dataclass ``obj`` in place, validating every key; each key set is
    recorded in ``origins`` as coming from ``origin`` (what `spkrec config` shows)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a table")
    hints = get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = prefix + name
        if key in _REMOVED:
            raise ConfigError(f"config key '{key}' is gone: {_REMOVED[key]}")
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
    """Checks that span keys; a window must hold at least one hop, and ranges be ordered."""
    t = cfg.train
    if cfg.stream.window_s and cfg.stream.hop_s > cfg.stream.window_s:
        raise ConfigError(f"config key 'stream.hop_s' ({cfg.stream.hop_s}) must not exceed 'stream.window_s' "
                          f"({cfg.stream.window_s})")
    for prefix, door in [("door", cfg.door)] + [(f"inputs.{n}.door", cfg.door_for(n)) for n in cfg.inputs]:
        if door.wins > door.of_last:
            raise ConfigError(f"config key '{prefix}.wins' ({door.wins}) must not exceed '{prefix}.of_last' "
                              f"({door.of_last})")
        for key in ("authorized", "command", "second_factor_command"):
            if not all(isinstance(v, str) and v for v in getattr(door, key)):
                raise ConfigError(f"config key '{prefix}.{key}' must be a list of non-empty strings")
        for key in ("url", "second_factor_url"):
            url = getattr(door, key)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"config key '{prefix}.{key}' must be an http:// or https:// URL, got {url!r}")
    if cfg.metrics.listen:
        listen_address(cfg.metrics.listen)
    for name, entry in cfg.inputs.items():
        if bool(entry.device) == bool(entry.file):
            raise ConfigError(f"config table 'inputs.{name}' needs exactly one of 'device' or 'file'")
    if t.hop_s > t.window_s:
        raise ConfigError(f"config key 'train.hop_s' ({t.hop_s}) must not exceed 'train.window_s' ({t.window_s})")
    for key, pair in (("train.augment.snr_db", t.augment.snr_db), ("train.augment.rt60_s", t.augment.rt60_s)):
        if not all(isinstance(v, (int, float)) for v in pair) or pair[0] > pair[1]:
            raise ConfigError(f"config key '{key}' must be [low, high] numbers with low <= high, got {pair!r}")


def listen_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` / ``":9464"`` (every interface) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"config key 'metrics.listen' must be HOST:PORT, e.g. \"127.0.0.1:9464\", got {value!r}")
    return host.strip("[]"), int(port)


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
