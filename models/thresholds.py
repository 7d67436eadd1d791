"""Which threshold is in force, and why: one rule for the daemon, identify, verify, the door and
meetings, so the same voice scores against the same number everywhere.

In order of preference under ``[decision] operating_point = "auto"``: the gallery's own
calibration for this model (``spkrec calibrate``, measured on the user's voices; a door takes
the stricter visit-level point stored next to it), else the model's equal-error point from its
training-time validation. ``"fixed"`` and the model's named points are honoured as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from .errors import ConfigError

if TYPE_CHECKING:
    from .artifact import ModelInfo
    from .config import Config, DecisionConfig
    from .gallery import Gallery


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    source: str  # said at start: "calibrated", "calibrated for the door", "model eer", "fixed", ...

    @property
    def calibrated(self) -> bool:
        return self.source.startswith("calibrated")


def resolve(decision: "DecisionConfig", thresholds: Mapping[str, float], calibrated: Mapping | None = None,
            door: bool = False) -> OperatingPoint:
    """The threshold for ``[decision]``, a model's stored ``thresholds`` and a gallery calibration."""
    point = decision.operating_point
    if point == "fixed":
        return OperatingPoint(float(decision.threshold), "fixed")
    if point == "calibrated" and calibrated is None:
        raise ConfigError("config key 'decision.operating_point' is 'calibrated', but the gallery has no "
                          "calibration for this model: run spkrec calibrate")
    if point in ("auto", "calibrated") and calibrated is not None:
        if door and "door" in calibrated:
            return OperatingPoint(float(calibrated["door"]["threshold"]), "calibrated for the door")
        return OperatingPoint(float(calibrated["threshold"]), "calibrated")
    point = "eer" if point == "auto" else point
    if point not in thresholds:
        raise ConfigError(f"config key 'decision.operating_point': the model has no '{point}' threshold")
    return OperatingPoint(float(thresholds[point]), f"model {point}")


def decision_point(cfg: "Config", info: "ModelInfo", gallery: "Gallery | None", door: bool = False) -> OperatingPoint:
    """The operating point for this model and gallery; ``door`` for a stream that drives a door."""
    calibrated = gallery.calibration(info.fingerprint) if gallery is not None else None
    return resolve(cfg.decision, info.thresholds, calibrated, door)
