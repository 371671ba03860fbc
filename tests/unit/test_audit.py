"""Membership attack calibration (copy => AUC near 1, independent data => near 0.5) and fail-closed gates."""

from __future__ import annotations

import math

import pytest

from safesynth.audit import dcr_attack, evaluate_gates, featurize
from safesynth.audit.attacks import AttackResult
from safesynth.spec import AuditSpec
from tests.helpers import make_spec, mixed_frame


def test_attack_on_a_copy_of_the_training_rows_scores_near_one(tmp_path):
    spec = make_spec(tmp_path)
    members, non_members = mixed_frame(800, seed=1), mixed_frame(800, seed=2)
    result = dcr_attack(members.copy(), members, non_members, spec=spec)
    assert result.auc > 0.95
    assert result.tpr_at_low_fpr > 0.5
    assert not evaluate_gates(AuditSpec(max_attack_auc=0.6), result).passed


def test_attack_on_independent_data_scores_near_half(tmp_path):
    spec = make_spec(tmp_path)
    synthetic = mixed_frame(2000, seed=3)
    result = dcr_attack(synthetic, mixed_frame(800, seed=1), mixed_frame(800, seed=2), spec=spec)
    # With 800 per side, the AUC's standard error is about 0.014: 0.5 +- 0.06 is > 4 sigma.
    assert abs(result.auc - 0.5) < 0.06
    assert result.auc_upper > result.auc
    assert evaluate_gates(AuditSpec(max_attack_auc=0.6), result).passed


def test_gate_uses_the_upper_bound_so_a_threshold_of_half_always_blocks(tmp_path):
    result = AttackResult(attack="x", auc=0.49, auc_upper=0.52, tpr_at_low_fpr=0.0, tpr_upper=0.01,
                          low_fpr=0.01, members=500, non_members=500)
    decision = evaluate_gates(AuditSpec(max_attack_auc=0.5), result)
    assert not decision.passed
    assert decision.reasons == ["membership-auc: attack AUC (95% upper bound) 0.520 > threshold 0.500"]


@pytest.mark.parametrize("auc", [math.nan, None])
def test_missing_audit_result_fails_closed(auc):
    attack = None if auc is None else AttackResult(attack="x", auc=auc, auc_upper=auc, tpr_at_low_fpr=0.0,
                                                   tpr_upper=0.0, low_fpr=0.01, members=1, non_members=1)
    decision = evaluate_gates(AuditSpec(max_attack_auc=0.9), attack)
    assert not decision.passed and "fails closed" in decision.reasons[0]


def test_tpr_gate_blocks_when_configured(tmp_path):
    spec = make_spec(tmp_path)
    members = mixed_frame(500, seed=1)
    result = dcr_attack(members, members, mixed_frame(500, seed=2), spec=spec)
    decision = evaluate_gates(AuditSpec(max_attack_auc=1.0, max_tpr_at_low_fpr=0.1), result)
    assert [g.gate for g in decision.gates] == ["membership-auc", "membership-tpr"]
    assert not decision.gates[1].passed


def test_features_use_declared_domains_only(tmp_path):
    spec = make_spec(tmp_path)
    x = featurize(mixed_frame(50), spec)
    # age, visits(+null), spend, plan(3 + null), active, joined(+null), note(length + 16 buckets)
    assert x.shape == (50, 1 + 2 + 1 + 4 + 1 + 2 + 17)
    assert (x[:, 0] >= 0).all() and (x[:, 0] <= 1).all()
