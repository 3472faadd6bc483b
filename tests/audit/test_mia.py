"""Membership-inference metrics on score distributions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedsynth.audit.mia import MiaResult, clopper_pearson, empirical_epsilon, evaluate_attack


def test_auc_of_gaussian_shift_matches_theory() -> None:
    rng = np.random.default_rng(0)
    shift, n = 1.0, 3000
    scores = np.r_[rng.normal(shift, 1, n), rng.normal(0, 1, n)]
    labels = np.r_[np.ones(n), np.zeros(n)]
    res = evaluate_attack("gauss", scores, labels, n_bootstrap=100)
    expected = stats.norm.cdf(shift / math.sqrt(2))  # P(X_member > X_nonmember)
    assert abs(res.auc - expected) < 0.02
    assert res.auc_ci[0] < expected < res.auc_ci[1]
    # TPR at FPR f for equal-variance Gaussians: 1 - Phi(Phi^-1(1 - f) - shift)
    for f in (0.001, 0.01):
        theory = 1 - stats.norm.cdf(stats.norm.ppf(1 - f) - shift)
        assert abs(res.tpr_at_fpr[str(f)] - theory) < 0.03
        lo, hi = res.tpr_at_fpr_ci[str(f)]
        assert lo <= res.tpr_at_fpr[str(f)] <= hi


def test_chance_attack() -> None:
    rng = np.random.default_rng(1)
    res = evaluate_attack(
        "noise", rng.normal(size=2000), np.r_[np.ones(1000), np.zeros(1000)], n_bootstrap=100
    )
    assert res.auc_ci[0] < 0.5 < res.auc_ci[1]
    assert res.tpr_at_fpr["0.01"] < 0.05
    assert res.epsilon_lower_bound < 0.5


def test_perfect_attack() -> None:
    labels = np.r_[np.ones(50), np.zeros(50)]
    res = evaluate_attack("perfect", labels.copy(), labels, n_bootstrap=50)
    assert res.auc == 1.0 and res.tpr_at_fpr["0.001"] == 1.0
    assert "TPR at FPR" in res.notes  # 50 non-members cannot resolve FPR 0.1%
    # all 50 members caught, no false positive: ln(TPR_lo / FPR_hi) with one-sided 95% CP bounds
    tpr_lo, fpr_hi = 0.05 ** (1 / 50), 1 - 0.05 ** (1 / 50)
    assert res.epsilon_lower_bound == pytest.approx(math.log(tpr_lo / fpr_hi), rel=1e-6)


def test_clopper_pearson_matches_scipy() -> None:
    for k, n in ((0, 20), (3, 20), (20, 20), (370, 1000)):
        lo, hi = clopper_pearson(k, n, alpha=0.05)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
        assert float(lo) == pytest.approx(ci.low, abs=1e-9)
        assert float(hi) == pytest.approx(ci.high, abs=1e-9)


def test_empirical_epsilon_sanity() -> None:
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(500), np.zeros(500)]
    # identical distributions give (almost) no evidence
    assert empirical_epsilon(rng.normal(size=1000), labels) < 0.5
    # a strong attack gives a positive bound that grows with the evidence and shrinks with delta
    strong = np.r_[rng.normal(4, 1, 500), rng.normal(0, 1, 500)]
    eps = empirical_epsilon(strong, labels)
    assert eps > 2.0
    assert empirical_epsilon(strong, labels, delta=0.5) < eps
    assert empirical_epsilon(strong[:20], np.r_[np.ones(10), np.zeros(10)]) < eps
    # the attack's direction is fixed in advance: a wrongly oriented score gives no evidence
    assert empirical_epsilon(-strong, labels) == 0.0


def test_result_roundtrip_and_errors() -> None:
    labels = np.r_[np.ones(30), np.zeros(30)]
    res = evaluate_attack("x", np.random.default_rng(3).normal(size=60), labels, n_bootstrap=20)
    assert MiaResult.from_dict(res.to_dict()) == res
    with pytest.raises(ValueError, match="both members and non-members"):
        evaluate_attack("x", np.zeros(3), np.ones(3))
