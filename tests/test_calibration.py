import numpy as np
import pytest

from spkrec.models.calibration import (calibrate_open_set, holdout, rates_at, smooth, threshold_at_far,
                                       verification)
from spkrec.models.scoring import UNKNOWN, as_norm, decide, normalize


def test_separable_scores_have_zero_eer():
    v = verification(np.array([0.8, 0.9, 0.95]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert v.eer == 0.0 and v.min_dcf == 0.0
    assert 0.4 < v.eer_threshold <= 0.8


def test_gaussian_eer_matches_theory():
    rng = np.random.default_rng(0)
    targets, nontargets = rng.normal(1.0, 1.0, 20000), rng.normal(-1.0, 1.0, 20000)
    v = verification(targets, nontargets)
    assert abs(v.eer - 0.1587) < 0.01  # Phi(-1)
    frr, far = rates_at(targets, nontargets, v.eer_threshold)
    assert abs(frr - far) < 0.01


def test_far1_threshold_accepts_at_most_one_percent():
    nontargets = np.linspace(0, 1, 1000)
    t = threshold_at_far(nontargets, 0.01)
    assert np.mean(nontargets >= t) <= 0.01
    assert np.mean(nontargets >= np.nextafter(t, -1)) > 0.01  # the lowest such threshold


def test_decision_needs_threshold_and_margin():
    labels = ("alice", "bob")
    assert decide(np.array([0.9, 0.2]), labels, threshold=0.5).label == "alice"
    assert decide(np.array([0.4, 0.2]), labels, threshold=0.5).label == UNKNOWN
    close = decide(np.array([0.9, 0.88]), labels, threshold=0.5, margin=0.05)
    assert close.label == UNKNOWN and close.candidates[0][0] == "alice"


def test_smoothing_is_the_deciders_running_mean():
    scores = np.arange(10, dtype=float)[:, None] * np.ones((1, 2))
    assert np.allclose(smooth(scores, 3)[:, 0], [1, 2, 3, 4, 5, 6, 7, 8])
    assert smooth(scores, 1) is not None and np.allclose(smooth(scores, 1), scores)
    assert smooth(scores[:2], 3).shape == (1, 2)  # fewer windows than the smoothing: their mean


def test_holdout_leaves_a_guard_between_enrollment_and_test():
    enroll_part, test_part = holdout(40, 0.25, guard=4)
    assert (enroll_part.stop, test_part.start, test_part.stop) == (26, 30, 40)


def _voices(rng, n_speakers, n_windows, spread):
    centres = rng.normal(size=(n_speakers, 32))
    return {f"s{i}": c + spread * rng.normal(size=(n_windows, 32)) for i, c in enumerate(centres)}


def test_open_set_calibration_meets_its_false_accept_target():
    rng = np.random.default_rng(1)
    enrolled = _voices(rng, 3, 60, 0.8)
    impostors = list(_voices(rng, 20, 30, 0.8).values())
    cal = calibrate_open_set(enrolled, impostors, target_far=0.01, smoothing=3)
    assert cal.far <= 0.01 and cal.frr < 0.2 and cal.eer < 0.1
    assert cal.speakers == ("s0", "s1", "s2") and cal.n_target == 3 * (15 - 2)  # 15 held out, averaged in runs of 3
    # the same impostors, scored by hand against voiceprints built without the held-out windows
    prints = normalize(np.stack([normalize(enrolled[f"s{i}"][:41]).mean(0) for i in range(3)]))
    worst = max(float(smooth(normalize(x) @ prints.T, 3).max()) for x in impostors)
    # 1758 non-target scores (20 impostors x 28 smoothed x 3 prints, held-out windows x the 2 other prints: 3 x 13 x 2):
    # 1 % allows 17 at or above the threshold, and those 17 are impostor windows as scored here
    assert cal.n_nontarget == 1758 and cal.far == 17 / 1758 and cal.threshold <= worst and sum(
        int((smooth(normalize(x) @ prints.T, 3) >= cal.threshold).sum()) for x in impostors) == 17


def test_calibration_without_any_nontarget_is_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError):
        calibrate_open_set(_voices(rng, 1, 40, 0.5), [], 0.01, 3)


def test_as_norm_is_the_mean_of_z_and_t_norm_over_the_closest_cohort():
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(4, 2))
    enroll_cohort, test_cohort = rng.normal(size=(2, 30)), rng.normal(size=(4, 30))
    normed = as_norm(raw, enroll_cohort, test_cohort, top_k=5)
    for t in range(4):
        for e in range(2):
            top_e = np.sort(enroll_cohort[e])[-5:]
            top_t = np.sort(test_cohort[t])[-5:]
            expected = 0.5 * ((raw[t, e] - top_e.mean()) / top_e.std() + (raw[t, e] - top_t.mean()) / top_t.std())
            assert np.isclose(normed[t, e], expected)


def test_door_threshold_refuses_every_impostor_visit_below_one_over_the_target():
    from spkrec.models.calibration import calibrate_door

    criticals = [0.31, float("-inf"), 0.52, 0.44, 0.12, float("-inf"), 0.2, 0.05, 0.38, 0.49]
    strict = calibrate_door(criticals, 0.01, {"authorized": ["a"]})
    assert strict.false_grants == 0 and strict.n_impostor_visits == 10 and 0.52 < strict.threshold < 0.5201
    loose = calibrate_door(criticals * 10, 0.1, {"authorized": ["a"]})  # 100 visits, 10 % may be granted
    assert loose.false_grants == 10 and 0.49 < loose.threshold <= 0.52  # only the ten 0.52 visits pass
    assert calibrate_door([float("-inf")] * 5, 0.01, {}).threshold == -1.0  # nobody could open it: any threshold
    with pytest.raises(ValueError):
        calibrate_door([], 0.01, {})


def test_file_threshold_accepts_at_most_the_target_share_of_impostor_scores():
    from spkrec.models.calibration import calibrate_utterances

    scores = np.linspace(-0.2, 0.6, 200).reshape(40, 5)
    point = calibrate_utterances(scores, 0.05)
    assert point.n_nontarget == 200 and point.far == 0.05 and np.mean(scores >= point.threshold) == 0.05
    ordered = np.sort(scores.ravel())
    assert ordered[-11] < point.threshold <= ordered[-10]  # the lowest such point: the 11th highest is refused
