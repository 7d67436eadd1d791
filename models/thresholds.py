"""Which threshold is in force, and why: one rule for the daemon, identify, verify, the door and
meetings, so the same voice scores against the same number everywhere.

In order of preference under ``[decision] operating_point = "auto"``: the gallery's own
calibration for this model (``spkrec calibrate``, measured on the user's voices), for the kind
of score being decided (a window, a whole file in one pass, a door's visit), else the model's
equal-error point from its training-time validation. ``"fixed"`` and the model's named points
are honoured as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from .errors import ConfigError

if TYPE_CHECKING:
    from .artifact import ModelInfo
    from .config import Config, DecisionConfig
    from .gallery import Gallery


WINDOW = "window"  # a 2-s window's score: live labels
UTTERANCE = "utterance"  # a whole file's one-pass score: identify, verify
DOOR = "door:"  # + a door's rule key (daemon.door.config.rule_key): a visit's one-pass score at that door

# What each kind's calibration is called when it is found, in the gallery's calibration record.
_FITTING = {WINDOW: "calibrated", UTTERANCE: "calibrated for files", DOOR: "calibrated for this door"}


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    source: str  # said at start: "calibrated", "calibrated for this door", "model eer", "fixed", ...

    @property
    def calibrated(self) -> bool:
        return self.source.startswith("calibrated")

    @property
    def fits(self) -> bool:
        """Measured on this gallery for this kind of score (not a stand-in from another kind)."""
        return self.source in _FITTING.values() or self.source == "fixed"


def _calibrated_for(calibrated: Mapping, kind: str) -> OperatingPoint:
    """The gallery's point for this kind of score; a window point stands in, said as such, where
    the gallery was calibrated before this kind was (a warning at start tells the user)."""
    if kind.startswith(DOOR) and kind[len(DOOR):] in calibrated.get("doors", {}):
        return OperatingPoint(float(calibrated["doors"][kind[len(DOOR):]]["threshold"]), _FITTING[DOOR])
    if kind == UTTERANCE and "utterance" in calibrated:
        return OperatingPoint(float(calibrated["utterance"]["threshold"]), _FITTING[UTTERANCE])
    if kind == WINDOW:
        return OperatingPoint(float(calibrated["threshold"]), _FITTING[WINDOW])
    what = "this door" if kind.startswith(DOOR) else "files"
    return OperatingPoint(float(calibrated["threshold"]), f"calibrated per window, not for {what}")


def resolve(decision: "DecisionConfig", thresholds: Mapping[str, float], calibrated: Mapping | None = None,
            kind: str = WINDOW) -> OperatingPoint:
    """The threshold for ``[decision]``, a model's stored ``thresholds`` and a gallery calibration,
    for one kind of score (``WINDOW``, ``UTTERANCE``, or ``DOOR`` + a door's rule key)."""
    point = decision.operating_point
    if point == "fixed":
        return OperatingPoint(float(decision.threshold), "fixed")
    if point == "calibrated" and calibrated is None:
        raise ConfigError("config key 'decision.operating_point' is 'calibrated', but the gallery has no "
                          "calibration for this model: run spkrec calibrate")
    if point in ("auto", "calibrated") and calibrated is not None:
        return _calibrated_for(calibrated, kind)
    point = "eer" if point == "auto" else point
    if point not in thresholds:
        raise ConfigError(f"config key 'decision.operating_point': the model has no '{point}' threshold")
    return OperatingPoint(float(thresholds[point]), f"model {point}")


def decision_point(cfg: "Config", info: "ModelInfo", gallery: "Gallery | None", kind: str = WINDOW) -> OperatingPoint:
    """The operating point for this model and gallery, for one kind of score."""
    calibrated = gallery.calibration(info.fingerprint) if gallery is not None else None
    return resolve(cfg.decision, info.thresholds, calibrated, kind)
