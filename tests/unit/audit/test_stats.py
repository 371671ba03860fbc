"""Attack statistics: AUC and its bootstrap interval, TPR at low FPR, copy rates, the epsilon bound."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from safesynth.audit.attacks import hanley_mcneil_variance
from safesynth.audit.stats import (
    AttackSummary,
    auc_bound_for_epsilon,
    bootstrap_auc_interval,
    clopper_pearson,
    exact_copy_rates,
    max_over_attacks,
    roc_auc,
    roc_bound_for_epsilon,
    summarize_attack,
    tpr_at_fpr,
)


def test_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 50).astype(float), rng.integers(0, 4, 70).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(np.r_[np.ones(50), np.zeros(70)], np.r_[pos, neg]))


def test_vectorised_bootstrap_equals_the_plain_loop():
    rng = np.random.default_rng(1)
    pos, neg = np.round(rng.normal(0.5, 1, 60), 1), np.round(rng.normal(0, 1, 40), 1)  # rounded: ties
    lo, hi = bootstrap_auc_interval(pos, neg, rng=np.random.default_rng(7), resamples=50)
    replay = np.random.default_rng(7)
    d1, d0 = replay.integers(0, 60, (50, 60)), replay.integers(0, 40, (50, 40))
    aucs = [roc_auc(pos[d1[b]], neg[d0[b]]) for b in range(50)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(aucs, [0.025, 0.975])))


def test_bootstrap_interval_covers_the_true_auc_with_a_sensible_width():
    # Members N(0.5, 1), non-members N(0, 1): true AUC = Phi(0.5 / sqrt 2) = 0.638. 40 seeded repetitions of
    # 400 per side; each covers with probability ~0.95, so >= 33 of 40 fails with probability ~1e-3 for a
    # correct interval (binomial(40, 0.95)); the seeds are fixed, so the test is deterministic.
    true_auc = float(norm.cdf(0.5 / math.sqrt(2)))
    covered, widths = 0, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        pos, neg = rng.normal(0.5, 1, 400), rng.normal(0, 1, 400)
        lo, hi = bootstrap_auc_interval(pos, neg, rng=rng)
        covered += lo <= true_auc <= hi
        widths.append(hi - lo)
    assert covered >= 33
    expected = 2 * 1.96 * math.sqrt(hanley_mcneil_variance(true_auc, 400, 400))  # ~0.076
    assert 0.75 * expected <= float(np.mean(widths)) <= 1.25 * expected


def test_tpr_at_low_fpr_never_exceeds_its_false_positive_budget():
    members = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    non_members = np.r_[3.5, np.zeros(99)]  # 100 non-members: 1% allows one false positive
    at_1pct = tpr_at_fpr(members, non_members, fpr=0.01)
    assert (at_1pct.value, at_1pct.successes, at_1pct.trials) == (1.0, 5, 5)
    at_01pct = tpr_at_fpr(members, non_members, fpr=0.001)  # no false positive: only 5 and 4 pass
    assert at_01pct.value == pytest.approx(0.4)
    assert at_01pct.lower < 0.4 < at_01pct.upper


def test_clopper_pearson_golden_values():
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))  # (0, 0.3085)
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_summary_and_maximum_over_attacks():
    rng = np.random.default_rng(3)
    weak = summarize_attack(rng.normal(0.1, 1, 200), rng.normal(0, 1, 200), attack="weak", rng=rng)
    strong = summarize_attack(rng.normal(2, 1, 200), rng.normal(0, 1, 200), attack="strong", rng=rng)
    assert isinstance(strong, AttackSummary) and set(strong.tpr_at_fpr) == {0.01, 0.001}
    assert strong.auc_interval[0] <= strong.auc <= strong.auc_interval[1]
    assert max_over_attacks([weak, strong]).attack == "strong"
    with pytest.raises(ValueError):
        max_over_attacks([])


def test_exact_copy_rates_count_whole_rows_across_dtypes():
    members = pd.DataFrame({"a": pd.array([1, 2, 3, 4], "Int64"), "b": ["x", "y", None, "z"]})
    non_members = pd.DataFrame({"a": pd.array([5, 6, 7, 8], "Int64"), "b": ["x", "y", "z", "w"]})
    synthetic = pd.DataFrame({"a": np.array([1.0, 3.0, 6.0, 9.0]), "b": ["x", None, "x", "q"]})
    rates = exact_copy_rates(synthetic, members, non_members)
    assert (rates.member_copies, rates.non_member_copies) == (2, 0)  # (1, x) and (3, null)
    assert rates.members.value > rates.non_members.value


def roc_region_area(epsilon: float, delta: float, grid: int = 200_001) -> float:
    """Area under the best ROC curve allowed by the two DP constraints, by the trapezoid rule.

    The grid is uniform plus geometric near both ends, where the kinks sit for a large epsilon.
    """
    ends = np.geomspace(1e-12, 1e-1, grid)
    x = np.unique(np.r_[np.linspace(0.0, 1.0, grid), ends, 1 - ends])
    f = np.minimum.reduce([math.exp(epsilon) * x + delta, 1 - math.exp(-epsilon) * (1 - delta - x), np.ones_like(x)])
    return float(np.trapezoid(np.clip(f, 0, 1), x))


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 1.0, 4.0, 10.0])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 0.05])
def test_epsilon_auc_bound_is_the_area_of_the_dp_roc_region(epsilon, delta):
    assert auc_bound_for_epsilon(epsilon=epsilon, delta=delta) == pytest.approx(roc_region_area(epsilon, delta),
                                                                               abs=1e-8)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_randomised_response_reaches_the_pure_bound(epsilon):
    # Randomised response has one ROC point (FPR, TPR) = (1, e^eps) / (1 + e^eps): AUC = (1 + TPR - FPR) / 2.
    tpr, fpr = math.exp(epsilon) / (1 + math.exp(epsilon)), 1 / (1 + math.exp(epsilon))
    bound = auc_bound_for_epsilon(epsilon=epsilon)
    assert bound == pytest.approx((1 + tpr - fpr) / 2) == pytest.approx(math.exp(epsilon) / (1 + math.exp(epsilon)))
    assert bound < 1 - 1 / (2 * math.exp(epsilon))  # the one-constraint bound is looser


def test_epsilon_bound_edges():
    assert auc_bound_for_epsilon(epsilon=0.0) == 0.5
    assert auc_bound_for_epsilon(epsilon=1000.0) == 1.0
    assert auc_bound_for_epsilon(epsilon=1.0, delta=1.0) == 1.0
    with pytest.raises(ValueError, match="`epsilon`"):
        auc_bound_for_epsilon(epsilon=-1.0)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 0.0), (1.0, 0.0), (2.0, 1e-3), (4.0, 0.05)])
def test_the_dp_roc_bound_encloses_the_auc_bound(epsilon, delta):
    fpr = np.linspace(0.0, 1.0, 200_001)
    tpr = roc_bound_for_epsilon(fpr, epsilon=epsilon, delta=delta)
    assert tpr[0] == pytest.approx(delta) and tpr[-1] == 1.0 and (np.diff(tpr) >= 0).all()
    area = float(np.sum((tpr[1:] + tpr[:-1]) / 2 * np.diff(fpr)))
    assert area == pytest.approx(auc_bound_for_epsilon(epsilon=epsilon, delta=delta), abs=1e-6)
