"""Verification metrics and thresholds from target / non-target score sets.

Training calibrates the model's thresholds with these, evaluation reports them, and the
daemon's calibrate command (user data) uses the same functions, so an "EER" means one thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scoring import mean_embedding, normalize


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


def smooth(scores: np.ndarray, n: int) -> np.ndarray:
    """Mean over each run of ``n`` consecutive windows (rows): the score the live decider compares."""
    scores = np.asarray(scores, dtype=np.float64)
    if n <= 1 or len(scores) < n:
        return scores if n <= 1 or len(scores) == 0 else scores.mean(axis=0, keepdims=True)
    sums = np.cumsum(np.concatenate([np.zeros((1, *scores.shape[1:])), scores]), axis=0)
    return (sums[n:] - sums[:-n]) / n


@dataclass(frozen=True)
class VisitCalibration:
    """A door's operating point: the threshold under which at most ``target`` of impostor visits
    would be granted. Each visit's critical threshold (the highest at which the door would have
    opened during it) is measured by replaying recordings through the door's own code
    (daemon/door/replay.py); here only the numbers meet."""

    threshold: float
    target: float
    false_grants: int
    n_impostor_visits: int
    rule: dict  # what the threshold was measured for (daemon.door.config.rule_of)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrate_door(impostor_criticals: list[float], target: float, rule: dict) -> VisitCalibration:
    """The lowest threshold that grants at most ``target`` of the impostor visits (none, when
    there are fewer than ``1 / target``); a visit that could open at no threshold counts as -2,
    below any cosine."""
    if not impostor_criticals:
        raise ValueError("door calibration needs impostor recordings with voiced speech")
    finite = np.array([c if np.isfinite(c) else -2.0 for c in impostor_criticals])
    threshold = max(threshold_at_far(finite, target), -1.0)
    return VisitCalibration(threshold, target, int(np.sum(finite >= threshold)), len(finite), rule)


@dataclass(frozen=True)
class UtteranceCalibration:
    """The point for whole files scored in one pass (identify, verify): at most ``target_far`` of
    the impostor recordings' scores against every voiceprint are accepted."""

    threshold: float
    target_far: float
    far: float
    n_nontarget: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrate_utterances(nontargets: np.ndarray, target_far: float) -> UtteranceCalibration:
    nontargets = np.asarray(nontargets, dtype=np.float64).ravel()
    if nontargets.size == 0:
        raise ValueError("file-level calibration needs impostor recordings")
    threshold = threshold_at_far(nontargets, target_far)
    return UtteranceCalibration(threshold, target_far, float(np.mean(nontargets >= threshold)), int(nontargets.size))


@dataclass(frozen=True)
class OpenSetCalibration:
    """A gallery's operating point, measured on the user's own voices."""

    threshold: float
    target_far: float
    far: float  # false-accept rate at ``threshold`` on the calibration impostors
    frr: float  # false-reject rate at ``threshold`` on the held-out enrollment windows
    eer: float
    eer_threshold: float  # where false accepts equal false rejects: meeting mode clusters guests there
    min_dcf: float
    n_target: int
    n_nontarget: int
    smoothing: int
    speakers: tuple[str, ...]

    def to_dict(self) -> dict:
        return {**self.__dict__, "speakers": list(self.speakers)}


def holdout(n_windows: int, share: float, guard: int) -> tuple[slice, slice]:
    """(enrollment part, held-out part) of one speaker's windows, in recording order.

    The held-out windows are the last ``share`` of them, and ``guard`` windows between the two
    parts are dropped: neighbouring windows overlap, and a target score against a voiceprint that
    contains the same audio would flatter the model.
    """
    n_test = max(1, int(round(share * n_windows)))
    n_enroll = n_windows - n_test - guard
    if n_enroll < 1:
        raise ValueError(f"{n_windows} windows are too few to hold some out")
    return slice(0, n_enroll), slice(n_windows - n_test, n_windows)


def calibrate_open_set(windows: dict[str, np.ndarray], impostors: list[np.ndarray], target_far: float,
                       smoothing: int, share: float = 0.25, guard: int = 4) -> OpenSetCalibration:
    """The threshold that false-accepts at most ``target_far`` of impostor scores.

    Targets: each enrolled speaker's held-out windows against a voiceprint built without them.
    Non-targets: those windows against every other enrolled voiceprint, and every impostor
    recording's windows against every voiceprint. All scores are averaged over ``smoothing``
    consecutive windows, exactly as the live decider does before it compares with the threshold.
    """
    names = sorted(windows)
    parts = {name: holdout(len(windows[name]), share, guard) for name in names}
    prints = np.stack([mean_embedding(windows[n][parts[n][0]]) for n in names])
    targets, nontargets = [], []
    for i, name in enumerate(names):
        scores = smooth(normalize(windows[name][parts[name][1]]) @ prints.T, smoothing)
        targets.append(scores[:, i])
        nontargets.append(np.delete(scores, i, axis=1).ravel())
    for recording in impostors:
        if len(recording):
            nontargets.append(smooth(normalize(recording) @ prints.T, smoothing).ravel())
    targets_all, nontargets_all = np.concatenate(targets), np.concatenate(nontargets)
    if nontargets_all.size == 0:
        raise ValueError("calibration needs impostor speech, or at least two enrolled speakers")
    threshold = threshold_at_far(nontargets_all, target_far)
    frr, far = rates_at(targets_all, nontargets_all, threshold)
    v = verification(targets_all, nontargets_all)
    return OpenSetCalibration(threshold, target_far, far, frr, v.eer, v.eer_threshold, v.min_dcf, len(targets_all),
                              len(nontargets_all), smoothing, tuple(names))

