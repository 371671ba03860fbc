"""The DP membership audit: sensitivity, an exact DP check on small tables, noise scale, calibration.

Statistical tests have a false-alarm rate of ALPHA = 1e-6 and prove their power (a 30% scale error, or a
count without its margin, is rejected). Noise in them is SeededNoise with fixed seeds: deterministic.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import roc_auc_score

from safesynth.audit import AuditDiagnostics, NoisyAudit, audit_membership, evaluate_gates
from safesynth.audit.membership import (
    COUNT_SHARE,
    SHORTFALL_PROBABILITY,
    calibrated_laplace,
    release_auc,
    rows_per_side,
    slot_auc,
    split_epsilon,
)
from safesynth.privacy import ReleaseAccount, SeededNoise
from safesynth.spec import AuditSpec
from tests.helpers import make_spec, mixed_frame

ALPHA = 1e-6
N = 20_000

SCORES = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 0.5, 1.0])  # ties are common


class ScriptedNoise:
    """Adds planned offsets, in call order (count, then AUC): shows what the gate reads. Not random."""

    secure = False

    def __init__(self, *offsets: float) -> None:
        self.offsets = list(offsets)

    def laplace(self, values, *, scale, discrete=False):
        return np.asarray(values, dtype=float) + self.offsets.pop(0)

    def gaussian(self, values, *, scale, discrete=False):
        raise AssertionError("the audit uses the Laplace mechanism only")


def account() -> ReleaseAccount:
    return ReleaseAccount(delta=1e-6)


# -------------------------------------------------------------------------------------- sensitivity


@given(k=st.integers(1, 12), data=st.data())
@settings(max_examples=300)
def test_one_slot_moves_the_auc_by_at_most_one_over_k(k, data):
    members = data.draw(st.lists(SCORES, max_size=k))
    non_members = data.draw(st.lists(SCORES, max_size=k))
    before = slot_auc(np.array(members, float), np.array(non_members, float), rows_per_side=k)
    side = members if data.draw(st.booleans()) else non_members
    change = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if change == "add" and len(side) < k:
        side.append(data.draw(SCORES))
    elif side and change in ("replace", "remove"):
        i = data.draw(st.integers(0, len(side) - 1))
        if change == "replace":
            side[i] = data.draw(SCORES)
        else:
            side.pop(i)  # the slot becomes a dummy
    after = slot_auc(np.array(members, float), np.array(non_members, float), rows_per_side=k)
    assert 0.0 <= after <= 1.0
    assert abs(after - before) <= 1.0 / k + 1e-12


def test_slot_auc_is_the_mann_whitney_auc_when_no_slot_is_missing():
    rng = np.random.default_rng(0)
    mem, non = rng.normal(0.3, 1, 200).round(1), rng.normal(0, 1, 200).round(1)  # with ties
    expected = roc_auc_score(np.r_[np.ones(200), np.zeros(200)], np.r_[mem, non])
    assert slot_auc(mem, non, rows_per_side=200) == pytest.approx(expected, abs=1e-12)


def test_missing_slots_count_as_the_attacks_wins_so_a_shortfall_fails_closed():
    # members [0.1, +inf] vs non-members [0.2, -inf]: 3 of the 4 pairs are won by the attack.
    assert slot_auc(np.array([0.1]), np.array([0.2]), rows_per_side=2) == 0.75
    assert slot_auc(np.array([]), np.array([]), rows_per_side=3) == 1.0
    with pytest.raises(ValueError, match="rows_per_side"):
        slot_auc(np.array([0.1, 0.2]), np.array([0.3]), rows_per_side=1)


def output_log_density(members, non_members, *, k: int, epsilon: float, grid: np.ndarray, sensitivity_scale=1.0):
    """log density of noisy slot AUC, exactly: every uniform subset of each side, then Laplace(1/(k eps))."""
    mem_sets = list(combinations(members, min(k, len(members))))
    non_sets = list(combinations(non_members, min(k, len(non_members))))
    aucs = np.array([slot_auc(np.array(m, float), np.array(n, float), rows_per_side=k)
                     for m in mem_sets for n in non_sets])
    scale = sensitivity_scale / (k * epsilon)
    logs = -np.abs(grid[:, None] - aucs[None, :]) / scale
    top = logs.max(axis=1, keepdims=True)
    return (top[:, 0] + np.log(np.exp(logs - top).mean(axis=1))) - math.log(2 * scale)


def max_privacy_loss(members, non_members, *, k, epsilon, sensitivity_scale=1.0) -> float:
    """The largest |log p_D(y) - log p_D'(y)| over neighbours D' (one member or non-member removed)."""
    grid = np.linspace(-3.0, 4.0, 1401)
    base = output_log_density(members, non_members, k=k, epsilon=epsilon, grid=grid,
                              sensitivity_scale=sensitivity_scale)
    worst = 0.0
    for side in ("members", "non_members"):
        rows = members if side == "members" else non_members
        for i in range(len(rows)):
            fewer = rows[:i] + rows[i + 1:]
            args = (fewer, non_members) if side == "members" else (members, fewer)
            other = output_log_density(*args, k=k, epsilon=epsilon, grid=grid, sensitivity_scale=sensitivity_scale)
            worst = max(worst, float(np.abs(base - other).max()))
    return worst


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_the_sampled_noisy_auc_is_epsilon_dp_on_small_neighbouring_tables(k):
    """Exact output densities over every sample, for tables with ties, with more and with fewer rows than k
    (dummies): removing any one record moves the log density by at most epsilon."""
    members = [0.3, 0.1, 0.7, 0.7, 0.2, 0.9]
    non_members = [0.5, 0.1, 0.0, 0.65]
    assert max_privacy_loss(members, non_members, k=k, epsilon=1.0) <= 1.0 + 1e-9


@pytest.mark.parametrize("k", [2, 5])
def test_the_sensitivity_bound_is_attained_so_the_check_has_power(k):
    """Two members that lose to every non-member: removing one turns its slot into a dummy and moves the AUC
    by exactly 1/k. The privacy loss is then epsilon itself, and half the noise exceeds it."""
    members, non_members = [0.0, 0.0], [1.0] * k
    assert max_privacy_loss(members, non_members, k=k, epsilon=1.0) == pytest.approx(1.0, abs=1e-6)
    assert max_privacy_loss(members, non_members, k=k, epsilon=1.0, sensitivity_scale=0.5) > 1.9


# ---------------------------------------------------------------------------------------- the noise


def test_auc_noise_has_the_calibrated_scale():
    """KS test of noisy - exact AUC against Laplace(1 / (k epsilon)) at alpha 1e-6; x0.7 and x1.3 rejected."""
    k, epsilon, noise, acc = 300, 0.3, SeededNoise(11), account()
    residual = np.array([release_auc(0.5, rows_per_side=k, epsilon=epsilon, noise=noise, account=acc)[0] - 0.5
                         for _ in range(N)])
    scale = 1.0 / (k * epsilon)
    assert acc.spends[0].detail["scale"] == pytest.approx(scale)
    assert stats.kstest(residual, stats.laplace(scale=scale).cdf).pvalue > ALPHA
    assert stats.kstest(residual, stats.laplace(scale=0.7 * scale).cdf).pvalue < ALPHA
    assert stats.kstest(residual, stats.laplace(scale=1.3 * scale).cdf).pvalue < ALPHA


def test_rows_per_side_exceeds_the_smaller_side_with_probability_at_most_beta():
    """Binomial test at alpha 1e-6 that P(k > n) <= beta; the same draws without the margin are rejected."""
    n, epsilon, noise = 1000, 0.1, SeededNoise(12)
    draws = [rows_per_side(n, n + 7, epsilon=epsilon, max_rows=10**9, noise=noise, account=account())
             for _ in range(N)]
    over = sum(k > n for k, _ in draws)
    assert stats.binom.sf(over - 1, N, SHORTFALL_PROBABILITY) > ALPHA
    over_without_margin = sum(math.floor(noisy) > n for _, noisy in draws)
    assert stats.binom.sf(over_without_margin - 1, N, SHORTFALL_PROBABILITY) < ALPHA
    assert all(k <= 500 for k, _ in (rows_per_side(n, n, epsilon=1.0, max_rows=500, noise=noise, account=account())
                                     for _ in range(100)))


@given(epsilon=st.floats(1e-6, 100.0), k=st.integers(1, 10**7))
def test_calibration_never_overshoots(epsilon, k):
    epsilon_count, epsilon_auc = split_epsilon(epsilon)
    assert math.fsum([epsilon_count, epsilon_auc]) <= epsilon
    assert epsilon_count == pytest.approx(COUNT_SHARE * epsilon)
    count = calibrated_laplace(sensitivity=1.0, epsilon=epsilon_count)
    auc = calibrated_laplace(sensitivity=1.0 / k, epsilon=epsilon_auc)
    assert count.epsilon <= epsilon_count and auc.epsilon <= epsilon_auc
    assert math.fsum([count.epsilon, auc.epsilon]) <= epsilon
    assert auc.epsilon == pytest.approx(epsilon_auc, rel=1e-12)  # and it is tight


# ----------------------------------------------------------------------------- the whole mechanism


def run(tmp_path, synthetic, members, non_members, *, noise, epsilon=0.4):
    spec = make_spec(tmp_path)
    acc = account()
    published, diagnostics = audit_membership(synthetic, members, non_members, spec=spec, epsilon=epsilon,
                                              account=acc, noise=noise, sampler=np.random.default_rng(0))
    return published, diagnostics, acc


def test_the_audit_records_its_spends_within_its_stage(tmp_path):
    members, non_members = mixed_frame(900, seed=1), mixed_frame(700, seed=2)
    published, _, acc = run(tmp_path, mixed_frame(500, seed=3), members, non_members, noise=SeededNoise(1))
    assert [s.stage for s in acc.spends] == ["audit.count", "audit.auc"]
    assert all(s.delta == 0.0 and s.mechanism == "laplace" for s in acc.spends)
    assert math.fsum(s.epsilon for s in acc.spends) <= 0.4
    assert published.epsilon == math.fsum(s.epsilon for s in acc.spends)
    count, auc = acc.spends
    assert count.event.noise_multiplier == pytest.approx(1 / (COUNT_SHARE * 0.4))
    assert auc.event.noise_multiplier == pytest.approx(1 / ((1 - COUNT_SHARE) * 0.4))
    assert auc.detail["rows_per_side"] == published.rows_per_side
    assert auc.detail["scale"] == pytest.approx(1 / (published.rows_per_side * (1 - COUNT_SHARE) * 0.4))
    assert acc.epsilon <= 0.4


def test_the_gate_reads_only_the_noisy_auc(tmp_path):
    """A copy of the training rows (exact AUC ~1) passes when the noise pulls it down; independent data
    (exact AUC ~0.5) is blocked when the noise pushes it up: the decision follows the noisy figure."""
    members, non_members = mixed_frame(600, seed=1), mixed_frame(600, seed=2)
    gate = AuditSpec(max_attack_auc=0.6)
    copy, copy_exact, _ = run(tmp_path, members.copy(), members, non_members, noise=ScriptedNoise(0.0, -0.75))
    assert copy_exact.exact is not None and copy_exact.exact.auc > 0.95
    assert copy.noisy_auc == pytest.approx(copy_exact.slot_auc - 0.75)
    assert evaluate_gates(gate, copy).passed
    fresh, fresh_exact, _ = run(tmp_path, mixed_frame(900, seed=3), members, non_members,
                                noise=ScriptedNoise(0.0, 0.3))
    assert fresh_exact.exact is not None and abs(fresh_exact.exact.auc - 0.5) < 0.1
    assert not evaluate_gates(gate, fresh).passed


def test_published_figures_are_dp_outputs_and_constants_only(tmp_path):
    published, diagnostics, _ = run(tmp_path, mixed_frame(500, seed=3), mixed_frame(900, seed=1),
                                    mixed_frame(700, seed=2), noise=SeededNoise(2))
    assert set(published.to_dict()) == {
        "attack", "rows_per_side", "noisy_auc", "auc_upper", "epsilon", "auc_noise_scale", "count_noise_scale",
        "shortfall_probability", "differentially_private", "neighbouring", "note",
        "attacks", "auc_lower", "auc_bound", "claimed_epsilon", "utility", "empirical_epsilon"}
    assert isinstance(diagnostics, AuditDiagnostics) and diagnostics.to_dict()["zone"] == "restricted"
    assert (diagnostics.train_rows, diagnostics.holdout_rows) == (900, 700)
    assert published.rows_per_side < 700  # the margin keeps k below the smaller side
    assert diagnostics.padded_members == diagnostics.padded_non_members == 0


def test_too_few_rows_release_no_auc_and_give_the_vacuous_bound(tmp_path):
    published, diagnostics, acc = run(tmp_path, mixed_frame(50, seed=3), mixed_frame(40, seed=1),
                                      mixed_frame(10, seed=2), noise=SeededNoise(3))
    assert published.rows_per_side == 0 and published.noisy_auc is None and published.auc_upper == 1.0
    assert [s.stage for s in acc.spends] == ["audit.count"]
    assert diagnostics.exact is None
    assert not evaluate_gates(AuditSpec(max_attack_auc=0.9), published).passed
    assert evaluate_gates(AuditSpec(max_attack_auc=1.0), published).passed  # a gate set to 1 never blocks


def test_a_shortfall_pads_instead_of_failing(tmp_path):
    # A count pushed up by its noise: k exceeds the holdout, the missing slots are the attack's wins.
    published, diagnostics, _ = run(tmp_path, mixed_frame(500, seed=3), mixed_frame(1000, seed=1),
                                    mixed_frame(100, seed=2), noise=ScriptedNoise(400.0, 0.0))
    assert published.rows_per_side > 100
    assert diagnostics.padded_non_members == published.rows_per_side - 100 and diagnostics.padded_members == 0
    assert diagnostics.exact is not None and diagnostics.slot_auc is not None
    assert diagnostics.slot_auc > diagnostics.exact.auc
    assert isinstance(published, NoisyAudit)
