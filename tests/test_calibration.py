import numpy as np

from spkrec.models.calibration import rates_at, threshold_at_far, verification
from spkrec.models.scoring import UNKNOWN, decide


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
