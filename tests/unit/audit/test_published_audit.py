"""The published audit: max over attacks with a public reference, utility figures, gates from the spec.

The DP argument needs each gated figure to move by at most its stated sensitivity when one record changes;
those bounds are checked here on random neighbouring inputs (a violation is a bug, not a chance event). The
calibration checks use fixed seeds; their expected values are stated next to them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from safesynth.audit import NoisyAudit, audit_membership, evaluate_gates
from safesynth.audit.attacks import ATTACKS, create_attack
from safesynth.audit.dp_utility import partitioned_accuracy, slot_tvd_2way
from safesynth.audit.reference import domain_sample
from safesynth.audit.stats import auc_bound_for_epsilon
from safesynth.errors import SpecError
from safesynth.preflight import check_attacks
from safesynth.privacy import ReleaseAccount, SeededNoise
from safesynth.spec import AuditSpec, GateSpec
from tests.helpers import make_spec, mixed_frame, rows_valid

GATED = {"audit": {"target_column": "plan", "max_tvd_2way": 0.9, "min_tstr_ratio": 0.1, "tstr_partitions": 5}}


def _audit(spec, synthetic, members, non_members, *, noise=None, epsilon=0.4, claimed=2.0):
    acc = ReleaseAccount(delta=1e-6)
    published, diagnostics = audit_membership(
        synthetic, members, non_members, spec=spec, epsilon=epsilon, account=acc, noise=noise or SeededNoise(0),
        sampler=np.random.default_rng(0), claimed_epsilon=claimed, claimed_delta=0.0)
    return published, diagnostics, acc


# --------------------------------------------------------------------------------- public reference


def test_the_public_reference_holds_declared_values_only(tmp_path):
    spec = make_spec(tmp_path)
    sample = domain_sample(spec, 400, seed=1)
    assert len(sample) == 400 and rows_valid(sample, spec)
    assert sample["visits"].isna().any() and not sample["age"].isna().any()  # nulls only where declared
    assert domain_sample(spec, 50, seed=1).equals(domain_sample(spec, 50, seed=1))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_gated_attacks_score_of_a_target_ignores_the_other_targets(tmp_path, name):
    """The sensitivity argument: with the reference fixed, a target's score is a function of that target."""
    spec = make_spec(tmp_path)
    synthetic, targets = mixed_frame(300, seed=3), mixed_frame(60, seed=4)
    reference = domain_sample(spec, 300)
    attack = create_attack(name)
    whole = attack.scores(synthetic=synthetic, reference=reference, targets=targets, spec=spec)
    part = attack.scores(synthetic=synthetic, reference=reference, targets=targets.iloc[20:45], spec=spec)
    np.testing.assert_allclose(part, whole[20:45], rtol=1e-9, atol=1e-12)


def test_unknown_attacks_are_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(SpecError, match="unknown attack"):
        check_attacks(make_spec(tmp_path, audit={"attacks": ["distance-to-closest-record", "nope"]}))
    check_attacks(make_spec(tmp_path))


# ------------------------------------------------------------------------------- max over attacks


def test_a_copy_of_the_training_rows_is_blocked_by_the_max_over_attacks(tmp_path):
    spec = make_spec(tmp_path)
    members, non_members = mixed_frame(600, seed=1), mixed_frame(600, seed=2)
    published, diagnostics, _ = _audit(spec, members.copy(), members, non_members)
    assert set(diagnostics.attack_aucs) == set(spec.audit.attacks)
    assert diagnostics.attack_aucs["distance-to-closest-record"] > 0.95
    assert diagnostics.slot_auc == max(diagnostics.attack_aucs.values())
    assert published.noisy_auc is not None and published.noisy_auc > 0.9
    assert not evaluate_gates(spec.audit, published).passed


def test_independent_rows_pass_every_gated_attack(tmp_path):
    # Members, non-members and synthetic rows are independent draws: each AUC is ~0.5 with a standard error
    # of ~0.017 at 500 rows per side; the max over 4 attacks stays below 0.56 except with probability < 1e-3.
    spec = make_spec(tmp_path)
    published, diagnostics, _ = _audit(spec, mixed_frame(800, seed=3), mixed_frame(700, seed=1),
                                       mixed_frame(700, seed=2))
    assert all(abs(v - 0.5) < 0.06 for v in diagnostics.attack_aucs.values()), diagnostics.attack_aucs
    assert evaluate_gates(spec.audit, published).passed


def test_a_failed_attack_counts_as_a_perfect_one(tmp_path, monkeypatch):
    spec = make_spec(tmp_path, audit={"attacks": ["distance-to-closest-record", "domias"]})

    def broken(self, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ATTACKS["domias"], "scores", broken)
    published, diagnostics, _ = _audit(spec, mixed_frame(300, seed=3), mixed_frame(400, seed=1),
                                       mixed_frame(400, seed=2))
    assert diagnostics.failed_attacks == {"domias": "RuntimeError"}
    assert diagnostics.attack_aucs["domias"] == 1.0 and diagnostics.slot_auc == 1.0
    assert not evaluate_gates(spec.audit, published).passed


def test_an_auc_beyond_the_claimed_epsilon_blocks_as_an_implementation_error(tmp_path):
    spec = make_spec(tmp_path)
    members, non_members = mixed_frame(600, seed=1), mixed_frame(600, seed=2)
    published, _, _ = _audit(spec, members.copy(), members, non_members, claimed=0.1)  # claims AUC <= 0.525
    assert published.auc_bound == pytest.approx(auc_bound_for_epsilon(epsilon=0.1))
    decision = evaluate_gates(AuditSpec(max_attack_auc=1.0), published)  # the AUC gate alone would pass
    assert not decision.passed
    assert [g.gate for g in decision.gates if not g.passed] == ["epsilon-consistency"]
    assert "implementation error" in decision.reasons[0]


# ------------------------------------------------------------------------------- utility figures


def test_the_utility_figures_are_charged_within_the_audit_stage(tmp_path):
    spec = make_spec(tmp_path, **GATED)
    published, diagnostics, acc = _audit(spec, mixed_frame(500, seed=3), mixed_frame(900, seed=1),
                                         mixed_frame(700, seed=2))
    assert [s.stage for s in acc.spends] == ["audit.count", "audit.auc", "audit.tvd_2way", "audit.tstr", "audit.trtr"]
    assert math.fsum(s.epsilon for s in acc.spends) <= 0.4 and published.epsilon <= 0.4
    k = published.rows_per_side
    sensitivities = {s.stage: s.detail["sensitivity"] for s in acc.spends[1:]}
    assert sensitivities == {"audit.auc": 1 / k, "audit.tvd_2way": 1 / k, "audit.tstr": 1 / k, "audit.trtr": 1 / 5}
    tvd, ratio = published.figure("tvd_2way"), published.figure("tstr_ratio")
    assert tvd is not None and tvd.lower <= tvd.value <= tvd.upper
    assert ratio is not None and ratio.lower <= ratio.value <= ratio.upper
    assert 0.0 < diagnostics.utility["tvd_2way"] < 1.0 and 0.0 < diagnostics.utility["trtr_accuracy"] <= 1.0
    decision = evaluate_gates(spec.audit, published)
    assert [g.gate for g in decision.gates] == ["membership-auc", "epsilon-consistency", "tvd-2way", "tstr-ratio"]


def test_useless_synthetic_rows_fail_the_utility_gates(tmp_path):
    """Synthetic rows uniform over the domains: the 2-way TVD is larger and the TSTR ratio lower.

    Exact figures (seeded): TVD 0.187 (junk) vs 0.114 (rows from the real distribution); TSTR / TRTR
    accuracy 0.68 vs 1.0. The audit epsilon is large (40) so that 5 partitions' noise (scale 0.02) stays
    below the differences; the decisions follow the bounds.
    """
    spec = make_spec(tmp_path, audit={"target_column": "plan", "max_tvd_2way": 0.15, "min_tstr_ratio": 0.7,
                                      "tstr_partitions": 5})
    members, non_members = mixed_frame(1500, seed=1), mixed_frame(1500, seed=2)
    junk, _, _ = _audit(spec, domain_sample(spec, 1500, seed=9), members, non_members, epsilon=40.0)
    useful, _, _ = _audit(spec, mixed_frame(1500, seed=3), members, non_members, epsilon=40.0)
    assert {g.gate for g in evaluate_gates(spec.audit, junk).gates if not g.passed} == {"tvd-2way", "tstr-ratio"}
    assert evaluate_gates(spec.audit, useful).passed
    assert useful.figure("tstr_ratio").value > junk.figure("tstr_ratio").value


def _neighbour(frame: pd.DataFrame, rng: np.random.Generator, donor: pd.DataFrame) -> pd.DataFrame:
    """Replace one random row by a row of ``donor`` (one slot changes)."""
    out = frame.copy()
    i, j = rng.integers(len(frame)), rng.integers(len(donor))
    out.iloc[i] = donor.iloc[j]
    return out


def test_one_slot_moves_the_2way_tvd_by_at_most_one_over_k(tmp_path):
    spec = make_spec(tmp_path)
    rng = np.random.default_rng(5)
    synthetic, donor = mixed_frame(300, seed=3), mixed_frame(200, seed=8)
    for trial in range(30):
        k = int(rng.integers(5, 60))
        slots = mixed_frame(int(rng.integers(1, k + 1)), seed=trial)
        base = slot_tvd_2way(slots, synthetic, spec, rows_per_side=k)
        changed = slot_tvd_2way(_neighbour(slots, rng, donor), synthetic, spec, rows_per_side=k)
        fewer = slot_tvd_2way(slots.iloc[1:], synthetic, spec, rows_per_side=k)  # one slot becomes a dummy
        assert abs(base - changed) <= 1 / k + 1e-12 and abs(base - fewer) <= 1 / k + 1e-12


def test_partitioned_accuracy_moves_by_at_most_one_over_m_or_one_over_k(tmp_path):
    spec = make_spec(tmp_path)
    rng = np.random.default_rng(6)
    donor = mixed_frame(100, seed=9)
    m, k = 4, 40
    train, test = mixed_frame(120, seed=1), mixed_frame(k, seed=2)
    parts = rng.integers(0, m, len(train))
    base = partitioned_accuracy(train, parts, test, target="plan", partitions=m, rows_per_side=k, spec=spec)
    for _ in range(6):
        i = int(rng.integers(len(train)))  # remove one training record: its part loses it, no other part moves
        removed = partitioned_accuracy(train.drop(train.index[i]), np.delete(parts, i), test, target="plan",
                                       partitions=m, rows_per_side=k, spec=spec)
        assert abs(base - removed) <= 1 / m + 1e-12
        slot = partitioned_accuracy(train, parts, _neighbour(test, rng, donor), target="plan", partitions=m,
                                    rows_per_side=k, spec=spec)
        assert abs(base - slot) <= 1 / k + 1e-12


# ------------------------------------------------------------------------------------ spec gates


def test_gates_default_to_the_attack_auc_and_take_the_shorthands():
    assert AuditSpec().effective_gates == (GateSpec(figure="attack_auc", max=0.6),)
    both = AuditSpec(max_tvd_2way=0.1, min_tstr_ratio=0.8, target_column="y")
    assert [g.figure for g in both.effective_gates] == ["attack_auc", "tvd_2way", "tstr_ratio"]


@pytest.mark.parametrize("audit, message", [
    ({"gates": [{"figure": "tvd_2way", "max": 0.1}]}, "attack_auc gate"),
    ({"gates": [{"figure": "attack_auc", "min": 0.1}]}, "exactly one limit"),
    ({"gates": [{"figure": "attack_auc", "max": 0.6}], "max_tvd_2way": 0.1}, "inside `gates`"),
    ({"min_tstr_ratio": 0.8}, "needs `target_column`"),
    ({"target_column": "note"}, "categorical or boolean"),
    ({"sensitive_columns": ["nope"]}, "declared columns"),
])
def test_bad_gate_settings_are_refused(tmp_path, audit, message):
    with pytest.raises(SpecError, match=message):
        make_spec(tmp_path, audit=audit)


def test_a_missing_utility_figure_fails_closed():
    spec = AuditSpec(max_tvd_2way=0.5)
    published = NoisyAudit(attack="x", rows_per_side=100, noisy_auc=0.5, auc_upper=0.55, epsilon=0.1,
                           auc_noise_scale=0.01, count_noise_scale=1.0, shortfall_probability=1e-3, auc_bound=0.9)
    decision = evaluate_gates(spec, published)
    assert not decision.passed and decision.reasons == ["tvd-2way: DP mean 2-way TVD (95% upper bound) is missing; "
                                                        "the gate fails closed"]


@pytest.mark.parametrize("empirical, passed", [(0.5, True), (1.0, True), (1.5, False), (math.nan, False)])
def test_the_canary_gate_blocks_above_the_claim_and_when_the_canary_audit_is_missing(empirical, passed):
    published = NoisyAudit(attack="x", rows_per_side=100, noisy_auc=0.5, auc_upper=0.55, epsilon=0.1,
                           auc_noise_scale=0.01, count_noise_scale=1.0, shortfall_probability=1e-3, auc_bound=0.9,
                           claimed_epsilon=1.0, empirical_epsilon=empirical)
    decision = evaluate_gates(AuditSpec(), published)
    canary = [g for g in decision.gates if g.gate == "canary-epsilon"]
    assert len(canary) == 1 and canary[0].passed is passed and decision.passed is passed
    assert published.to_dict()["empirical_epsilon"] == (None if math.isnan(empirical) else empirical)
