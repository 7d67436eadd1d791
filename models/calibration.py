"""Verification metrics and thresholds from target / non-target score sets.

Training calibrates the model's thresholds with these, evaluation reports them, and the
daemon's calibrate command (user data) uses the same functions, so an "EER" means one thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _sorted_rates(targets: np.ndarray, nontargets: np.ndarray):
    """Miss and false-alarm rates at every candidate threshold, thresholds ascending."""
    scores = np.concatenate([targets, nontargets])
    is_target = np.concatenate([np.ones(len(targets)), np.zeros(len(nontargets))])
    order = np.argsort(scores, kind="mergesort")
    scores, is_target = scores[order], is_target[order]
    # Threshold at scores[i] accepts scores >= scores[i]: misses are targets below it.
    misses = np.concatenate([[0.0], np.cumsum(is_target)])[:-1] / max(len(targets), 1)
    false_alarms = 1.0 - np.concatenate([[0.0], np.cumsum(1 - is_target)])[:-1] / max(len(nontargets), 1)
    return scores, misses, false_alarms


@dataclass(frozen=True)
class Verification:
    eer: float
    eer_threshold: float
    min_dcf: float
    far1_threshold: float
    n_target: int
    n_nontarget: int


def verification(targets: np.ndarray, nontargets: np.ndarray, p_target: float = 0.01) -> Verification:
    """EER, normalised minDCF (c_miss = c_fa = 1) and the threshold for a 1 % false-accept rate."""
    targets = np.asarray(targets, dtype=np.float64)
    nontargets = np.asarray(nontargets, dtype=np.float64)
    if len(targets) == 0 or len(nontargets) == 0:
        raise ValueError("verification needs both target and non-target scores")
    thresholds, p_miss, p_fa = _sorted_rates(targets, nontargets)
    i = int(np.argmin(np.abs(p_miss - p_fa)))
    eer = float((p_miss[i] + p_fa[i]) / 2)
    dcf = p_target * p_miss + (1 - p_target) * p_fa
    min_dcf = float(np.min(dcf) / min(p_target, 1 - p_target))
    return Verification(
        eer=eer,
        eer_threshold=float(thresholds[i]),
        min_dcf=min_dcf,
        far1_threshold=threshold_at_far(nontargets, 0.01),
        n_target=len(targets),
        n_nontarget=len(nontargets),
    )


def threshold_at_far(nontargets: np.ndarray, far: float) -> float:
    """The lowest threshold whose false-accept rate on ``nontargets`` is at most ``far``."""
    ordered = np.sort(np.asarray(nontargets, dtype=np.float64))
    allowed = int(np.floor(far * len(ordered)))  # impostor scores allowed at or above
    if allowed >= len(ordered):
        return float(ordered[0])
    # Just above the highest impostor score that must be rejected.
    return float(np.nextafter(ordered[len(ordered) - allowed - 1], np.inf))


def rates_at(targets: np.ndarray, nontargets: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-reject rate, false-accept rate) at one threshold."""
    frr = float(np.mean(np.asarray(targets) < threshold)) if len(targets) else 0.0
    far = float(np.mean(np.asarray(nontargets) >= threshold)) if len(nontargets) else 0.0
    return frr, far
