"""The service's sections: ``[log]`` (the service log's level) and ``[metrics]`` (where the
metrics and health endpoint listens, and when a silent input counts as stale)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spkrec.models.errors import ConfigError
from spkrec.models.options import Section, option


@dataclass
class LogConfig:
    level: str = option("info", choices=("debug", "info", "warning", "error"))


@dataclass
class MetricsConfig:
    listen: str = option("")
    stale_s: float = option(30.0, lo=1.0, hi=86400.0)


def listen_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` / ``":9464"`` (every interface) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"config key 'metrics.listen' must be HOST:PORT, e.g. \"127.0.0.1:9464\", got {value!r}")
    return host.strip("[]"), int(port)


def _validate_metrics(cfg: Any) -> None:
    if cfg.metrics.listen:
        listen_address(cfg.metrics.listen)


LOG = Section("log", LogConfig)
METRICS = Section("metrics", MetricsConfig, _validate_metrics)
