"""Membership attack calibration (copy => AUC near 1, independent data => near 0.5) and fail-closed gates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safesynth.audit import NoisyAudit, audit_membership, dcr_attack, evaluate_gates, featurize
from safesynth.privacy import ReleaseAccount, SeededNoise
from safesynth.spec import AuditSpec
from tests.helpers import make_spec, mixed_frame


def dp_audit(spec, synthetic, members, non_members, *, epsilon=1.0, seed=0):
    account = ReleaseAccount(delta=spec.privacy.delta)
    published, _ = audit_membership(synthetic, members, non_members, spec=spec, epsilon=epsilon, account=account,
                                    noise=SeededNoise(seed), sampler=np.random.default_rng(seed))
    return published


def test_attack_on_a_copy_of_the_training_rows_scores_near_one(tmp_path):
    spec = make_spec(tmp_path)
    members, non_members = mixed_frame(800, seed=1), mixed_frame(800, seed=2)
    result = dcr_attack(members.copy(), members, non_members, spec=spec)
    assert result.auc > 0.95
    assert result.tpr_at_low_fpr > 0.5
    # The gate sees the DP audit: with a DP count of ~800 rows per side the noise is small.
    published = dp_audit(spec, members.copy(), members, non_members)
    assert published.noisy_auc is not None and published.noisy_auc > 0.9
    assert not evaluate_gates(AuditSpec(max_attack_auc=0.6), published).passed


def test_attack_on_independent_data_scores_near_half(tmp_path):
    spec = make_spec(tmp_path)
    synthetic = mixed_frame(2000, seed=3)
    result = dcr_attack(synthetic, mixed_frame(800, seed=1), mixed_frame(800, seed=2), spec=spec)
    # With 800 per side, the AUC's standard error is about 0.014: 0.5 +- 0.06 is > 4 sigma.
    assert abs(result.auc - 0.5) < 0.06
    assert result.auc_upper > result.auc
    published = dp_audit(spec, synthetic, mixed_frame(800, seed=1), mixed_frame(800, seed=2))
    assert published.noisy_auc is not None and published.auc_upper > published.noisy_auc
    assert evaluate_gates(AuditSpec(max_attack_auc=0.6), published).passed


def noisy(auc: float | None, upper: float, k: int = 500) -> NoisyAudit:
    return NoisyAudit(attack="x", rows_per_side=k, noisy_auc=auc, auc_upper=upper, epsilon=0.4,
                      auc_noise_scale=0.01, count_noise_scale=10.0, shortfall_probability=1e-3)


def test_gate_uses_the_upper_bound_so_a_threshold_of_half_always_blocks():
    # Behaviour change: the gate now reads the DP audit's noisy AUC bound, not the exact one.
    decision = evaluate_gates(AuditSpec(max_attack_auc=0.5), noisy(0.49, 0.52))
    assert not decision.passed
    assert decision.reasons == ["membership-auc: DP max attack AUC (95% upper bound) 0.520 > threshold 0.500"]


@pytest.mark.parametrize("auc", [math.nan, None])
def test_missing_audit_result_fails_closed(auc):
    audit = None if auc is None else noisy(auc, auc)
    decision = evaluate_gates(AuditSpec(max_attack_auc=0.9), audit)
    assert not decision.passed and "fails closed" in decision.reasons[0]


def test_features_use_declared_domains_only(tmp_path):
    spec = make_spec(tmp_path)
    x = featurize(mixed_frame(50), spec)
    # age, visits(+null), spend, plan(3 + null), active, joined(+null), note(length + 16 buckets)
    assert x.shape == (50, 1 + 2 + 1 + 4 + 1 + 2 + 17)
    assert (x[:, 0] >= 0).all() and (x[:, 0] <= 1).all()
