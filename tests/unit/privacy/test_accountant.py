"""Accounting: golden values, round trips, RDP vs PLD, monotonicity, and a never-overshoot property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safesynth.privacy.accountant import (
    HEADROOM_MARGIN,
    ReleaseAccount,
    StageSpend,
    calibrate_noise_multiplier,
    compose_epsilon,
    event_from_dict,
    event_to_dict,
    headroom,
    pure_dp_event,
    pure_dp_rdp,
    supports,
)
from safesynth.privacy.mechanisms import GaussianMechanism, LaplaceMechanism
from safesynth.privacy.planner import BudgetPlan, StageBudget


def dpsgd(noise_multiplier: float, sample_rate: float, steps: int) -> dp_event.DpEvent:
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier)), steps
    )


OPACUS_EVENT = dpsgd(1.5, 0.04, 2250)  # Opacus' accountant tests: sigma=1.5, q=0.04, 2250 steps, delta=1e-5


# ------------------------------------------------------------------------------------------ golden


def test_rdp_matches_opacus_golden_value():
    # Opacus RDPAccountant on this event gives 7.329111 (its own test suite).
    assert compose_epsilon([OPACUS_EVENT], delta=1e-5, accountant="rdp") == pytest.approx(7.329111, abs=1e-3)


def test_pld_matches_opacus_prv_golden_value_within_two_percent():
    # Opacus PRVAccountant gives 6.7774; PLD and PRV are both near-exact numerical accountants.
    assert compose_epsilon([OPACUS_EVENT], delta=1e-5, accountant="pld") == pytest.approx(6.7774, rel=0.02)


@pytest.mark.parametrize("scale", [0.5, 1.0, 4.0, 20.0])
def test_laplace_epsilon_is_sensitivity_over_scale(scale):
    mech = LaplaceMechanism(sensitivity=2.0, scale=scale)
    assert mech.epsilon == pytest.approx(2.0 / scale)
    # At a tiny delta the PLD of one Laplace release is its pure epsilon (within discretisation).
    assert compose_epsilon([mech.event()], delta=1e-12, accountant="pld") == pytest.approx(mech.epsilon, rel=1e-3)
    account = ReleaseAccount(delta=0.0, spends=[_spend("lap", mech.event(), mech.epsilon)])
    assert account.epsilon == pytest.approx(2.0 / scale)


def test_gaussian_rdp_matches_closed_form():
    # RDP of the Gaussian is alpha / (2 sigma^2); eps(delta) = min_a rdp + log1p(-1/a) - log(delta a)/(a-1).
    sigma, delta = 3.0, 1e-6
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])
    expected = min(a / (2 * sigma**2) + math.log1p(-1 / a) - math.log(delta * a) / (a - 1) for a in orders)
    assert compose_epsilon([dp_event.GaussianDpEvent(sigma)], delta=delta) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------- discrete Laplace


def test_discrete_laplace_is_accounted_as_randomized_response_not_continuous_laplace():
    mech = LaplaceMechanism(sensitivity=1.0, scale=1.0, discrete=True)
    assert isinstance(mech.event(), dp_event.DiscreteLaplaceDpEvent)
    orders = np.array([2.0])
    # RDP of binary randomized response at eps=1, order 2, by hand: log(p^2/q + q^2/p), p = e/(1+e).
    p = math.e / (1 + math.e)
    q = 1 - p
    assert pure_dp_rdp(1.0, orders)[0] == pytest.approx(math.log(p * p / q + q * q / p), rel=1e-12)
    # ... which is worse than the continuous Laplace at every order, so composing it costs more.
    many = [dp_event.SelfComposedDpEvent(mech.event(), 50)]
    continuous = [dp_event.SelfComposedDpEvent(dp_event.LaplaceDpEvent(1.0), 50)]
    for accountant in ("rdp", "pld"):
        assert compose_epsilon(many, delta=1e-6, accountant=accountant) > compose_epsilon(
            continuous, delta=1e-6, accountant=accountant
        )


def test_pure_event_rdp_and_pld_agree_and_never_beat_pure_composition():
    events = [dp_event.SelfComposedDpEvent(pure_dp_event(0.2), 30)]
    rdp = compose_epsilon(events, delta=1e-6, accountant="rdp")
    pld = compose_epsilon(events, delta=1e-6, accountant="pld")
    assert pld <= rdp * (1 + 1e-3)
    assert pld >= 0.8 * rdp
    assert rdp <= 30 * 0.2 + 1e-9  # still an improvement over basic composition here


# ------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("target", [0.3, 1.0, 3.0])
def test_gaussian_calibrate_then_account_meets_target_tightly(target):
    mech = GaussianMechanism.calibrate(sensitivity=1.0, epsilon=target, delta=1e-6)
    spent = compose_epsilon([mech.event()], delta=1e-6)
    assert spent <= target
    assert spent >= target * 0.99  # bisection to rel_tol 1e-3 on sigma


def test_dpsgd_calibrate_then_account_meets_target():
    sigma = calibrate_noise_multiplier(lambda m: dpsgd(m, 0.01, 1000), epsilon=2.0, delta=1e-5)
    spent = compose_epsilon([dpsgd(sigma, 0.01, 1000)], delta=1e-5)
    assert 2.0 * 0.98 <= spent <= 2.0


def test_events_serialise_and_round_trip():
    event = dp_event.ComposedDpEvent([
        OPACUS_EVENT,
        dp_event.LaplaceDpEvent(2.0),
        pure_dp_event(0.5),
        dp_event.GaussianDpEvent(3.0),
        dp_event.ZCDpEvent(rho=0.0125),
        dp_event.NoOpDpEvent(),
    ])
    assert event_from_dict(event_to_dict(event)) == event
    spend = StageSpend(stage="s", event=event, epsilon=1.0, delta=1e-6, extra_delta=1e-7, mechanism="m",
                       secure_noise=True, detail={"k": 1})
    assert StageSpend.from_dict(spend.to_dict()) == spend


# ----------------------------------------------------------------------------- RDP vs PLD, shapes


@pytest.mark.parametrize(
    "event",
    [dpsgd(1.0, 0.01, 500), dpsgd(0.8, 0.05, 200), dp_event.GaussianDpEvent(2.0),
     dp_event.ComposedDpEvent([dpsgd(1.1, 0.02, 300), dp_event.LaplaceDpEvent(10.0)])],
    ids=["sgd-a", "sgd-b", "gaussian", "sgd+laplace"],
)
def test_pld_is_tighter_than_rdp_but_close(event):
    rdp = compose_epsilon([event], delta=1e-6, accountant="rdp")
    pld = compose_epsilon([event], delta=1e-6, accountant="pld")
    assert pld <= rdp
    assert pld >= 0.6 * rdp


def test_epsilon_grows_with_steps():
    values = [compose_epsilon([dpsgd(1.0, 0.02, steps)], delta=1e-6) for steps in (10, 100, 1000, 5000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_epsilon_grows_as_noise_shrinks():
    values = [compose_epsilon([dpsgd(sigma, 0.02, 500)], delta=1e-6) for sigma in (4.0, 2.0, 1.0, 0.7)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_composition_costs_at_least_its_largest_part(accountant):
    parts = [dpsgd(1.0, 0.02, 500), dp_event.LaplaceDpEvent(5.0), dp_event.GaussianDpEvent(8.0)]
    whole = compose_epsilon(parts, delta=1e-6, accountant=accountant)
    for part in parts:
        assert whole >= compose_epsilon([part], delta=1e-6, accountant=accountant)


# ---------------------------------------------------------------------------------- release account


def _spend(stage: str, event: dp_event.DpEvent, epsilon: float, delta: float = 0.0, extra: float = 0.0) -> StageSpend:
    return StageSpend(stage=stage, event=event, epsilon=epsilon, delta=delta, extra_delta=extra,
                      mechanism="test", secure_noise=True)


def _account() -> ReleaseAccount:
    sgd = dpsgd(1.0, 0.02, 500)
    gauss = GaussianMechanism.calibrate(sensitivity=1.0, epsilon=0.5, delta=2e-7)
    account = ReleaseAccount(delta=1e-6)
    account.add(_spend("discovery.a", LaplaceMechanism(sensitivity=1, scale=10, discrete=True).event(), 0.1,
                       2e-7, extra=2e-7))
    account.add(_spend("condition", gauss.event(), 0.5, 2e-7))
    account.add(_spend("generator", sgd, compose_epsilon([sgd], delta=6e-7), 6e-7))
    return account


def test_release_epsilon_is_at_most_basic_sum_and_accountant():
    account = _account()
    assert account.epsilon <= account.basic_epsilon
    assert account.epsilon <= account.epsilon_by("rdp")
    assert account.epsilon > 0


def test_extra_delta_is_taken_from_the_accountants_delta():
    account = _account()
    without = compose_epsilon(account.events(), delta=account.delta)
    assert account.extra_delta == pytest.approx(2e-7)
    assert account.epsilon_by("rdp") > without  # composed at 8e-7, not 1e-6
    assert account.epsilon_by("rdp") == pytest.approx(compose_epsilon(account.events(), delta=8e-7))


def test_extra_delta_above_release_delta_gives_no_finite_accountant_bound():
    account = ReleaseAccount(delta=1e-7, spends=[_spend("t", pure_dp_event(1.0), 1.0, 1e-6, extra=1e-6)])
    assert account.epsilon_by("rdp") == math.inf


@pytest.mark.slow
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    epsilon=st.floats(min_value=0.2, max_value=8.0),
    delta_exp=st.integers(min_value=-9, max_value=-4),
    sample_rate=st.floats(min_value=0.001, max_value=0.1),
    steps=st.integers(min_value=1, max_value=2000),
)
def test_calibrated_noise_never_overshoots_target_epsilon(epsilon, delta_exp, sample_rate, steps):
    delta = 10.0**delta_exp
    sigma = calibrate_noise_multiplier(lambda m: dpsgd(m, sample_rate, steps), epsilon=epsilon, delta=delta)
    assert compose_epsilon([dpsgd(sigma, sample_rate, steps)], delta=delta) <= epsilon


def test_guarantee_caveat_appears_next_to_epsilon_only_without_secure_noise():
    secure = ReleaseAccount(delta=1e-5, spends=[_spend("generator.count", dp_event.LaplaceDpEvent(5.0), 0.2)])
    assert secure.guarantee is None and "guarantee" not in secure.summary()
    sgd = StageSpend(stage="generator.dp_sgd", event=dpsgd(1.0, 0.01, 100), epsilon=1.0, delta=1e-5,
                     mechanism="dp-sgd (poisson-subsampled gaussian)", secure_noise=False)
    account = ReleaseAccount(delta=1e-5, spends=[*secure.spends, sgd])
    summary = account.summary()
    assert summary["secure_noise"] is False
    assert summary["guarantee"] == ("epsilon holds if torch's RNG is unpredictable; DP-SGD noise "
                                    "(generator.dp_sgd) is not from a secure sampler")
    assert list(summary).index("guarantee") == list(summary).index("epsilon") + 1
    seeded = StageSpend(stage="condition", event=dp_event.LaplaceDpEvent(2.0), epsilon=0.5, delta=0.0,
                        mechanism="laplace", secure_noise=False)
    mixed = ReleaseAccount(delta=1e-5, spends=[sgd, seeded]).guarantee
    assert mixed is not None and "\n" not in mixed
    assert "(generator.dp_sgd)" in mixed and "noise of condition is from a seeded, non-secure generator" in mixed


def test_memoised_epsilons_equal_fresh_ones_and_never_mix_events(monkeypatch):
    from safesynth.privacy import accountant as acc

    monkeypatch.setattr(acc, "_EPSILONS", acc.collections.OrderedDict())
    events = [dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(m)) for m in (0.8, 0.8000001, 1.2)]
    fresh = [acc._compose_epsilon([e], delta=1e-5, accountant="rdp") for e in events]
    assert len(set(fresh)) == 3  # neighbouring noise multipliers give different epsilons
    for _ in range(2):  # the second pass is served from the memo
        assert [acc.compose_epsilon([e], delta=1e-5) for e in events] == fresh
    assert acc.compose_epsilon([events[0]], delta=1e-6) > fresh[0]  # delta is part of the key
    assert len(acc._EPSILONS) == 4


# ------------------------------------------------------------------- zCDP stages and the release's headroom


def test_a_zcdp_stage_is_its_rdp_curve_under_rdp_and_its_own_bound_under_pld():
    """OpenDP's rho-zCDP (MST, AIM) is the RDP curve rho * alpha; PLD has no such event, so it composes the
    stage's own (epsilon, delta) bound instead, and the summary states no PLD figure for the release."""
    rho, eps, delta = 0.0125, 0.63, 7e-6
    zcdp = dp_event.ZCDpEvent(rho=rho)
    assert supports(zcdp, "rdp") and not supports(zcdp, "pld") and supports(pure_dp_event(1.0), "pld")
    gaussian = dp_event.GaussianDpEvent(noise_multiplier=1 / math.sqrt(2 * rho))  # exactly rho-zCDP
    assert compose_epsilon([zcdp], delta=1e-5) == pytest.approx(compose_epsilon([gaussian], delta=1e-5), rel=1e-9)
    account = ReleaseAccount(delta=1e-5, spends=[_spend("generator", zcdp, eps, delta),
                                                 _spend("audit", dp_event.LaplaceDpEvent(10.0), 0.1, 0.0)])
    stand_in = compose_epsilon([pure_dp_event(eps), dp_event.LaplaceDpEvent(10.0)], delta=1e-5 - delta,
                               accountant="pld")
    assert account.epsilon_by("pld") == pytest.approx(stand_in)
    assert account.extra_delta == 0.0  # under the chosen accountant (RDP) the zCDP stage has no bad event
    summary = account.summary()
    assert summary["epsilon_pld"] is None and summary["epsilon_rdp"] == account.epsilon_by("rdp")
    # Composed in RDP, the two stages cost less than their bounds' sum.
    assert account.epsilon < account.basic_epsilon


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_noise_calibrated_to_the_headroom_keeps_the_release_within_target_after_the_later_stages(accountant):
    """DP-SGD calibrated against what the release's composition leaves (stages spent so far, later stages at
    their planned worst case) needs less noise than its share alone, and the release's epsilon still meets
    the target once the later stage spends its plan."""
    target, delta = 1.0, 1e-5
    warm = (dp_event.ZCDpEvent(rho=0.0118) if accountant == "rdp" else pure_dp_event(0.616))
    account = ReleaseAccount(delta=delta, accountant=accountant, spends=[
        _spend("repairs", pure_dp_event(0.02), 0.02, 0.0),
        _spend("generator.count", dp_event.LaplaceDpEvent(1 / 0.044), 0.044, 0.0),
        _spend("generator.warm_start", warm, 0.616, 6.16e-6, extra=0.0 if accountant == "rdp" else 6.16e-6),
    ])
    plan = BudgetPlan(epsilon=target, delta=delta, accountant=accountant, stages=(
        StageBudget(name="repairs", fraction=0.02, epsilon=0.02, delta=0.0),
        StageBudget(name="generator", fraction=0.88, epsilon=0.88, delta=8.8e-6),
        StageBudget(name="audit", fraction=0.1, epsilon=0.1, delta=1e-6)))  # the audit: still to come
    room = headroom(account, plan, current="generator")
    assert room is not None and room.epsilon == pytest.approx(target * (1 - HEADROOM_MARGIN[accountant]))

    def sgd(m: float) -> dp_event.DpEvent:
        return dpsgd(m, 1024 / 39073, 458)

    alone = calibrate_noise_multiplier(sgd, epsilon=0.22, delta=2.64e-6, accountant=accountant)
    joint = calibrate_noise_multiplier(sgd, epsilon=room.epsilon, delta=room.delta, accountant=accountant,
                                       alongside=room.events)
    # Under RDP the warm start is its zCDP curve and DP-SGD gets most of the slack (adult-sized: ~2.8x less
    # noise); under PLD the warm start is its (epsilon, delta) stand-in and less is left.
    assert joint < (alone / 2 if accountant == "rdp" else alone * 0.95)
    account.add(_spend("generator.dp_sgd", sgd(joint), compose_epsilon([sgd(joint)], delta=2.64e-6,
                                                                       accountant=accountant), 2.64e-6))
    for _ in range(2):  # the audit spends its planned 0.1 in two pure-DP releases
        account.add(_spend("audit", dp_event.LaplaceDpEvent(20.0), 0.05, 0.0))
    assert account.basic_epsilon > target  # basic composition no longer states it ...
    assert account.epsilon_by(accountant) <= target  # ... the accountant does
    assert account.epsilon <= target


def test_no_headroom_without_delta_left_for_the_accountant():
    account = ReleaseAccount(delta=1e-6, spends=[_spend("discovery", pure_dp_event(0.1), 0.1, 1e-6, extra=1e-6)])
    plan = BudgetPlan(epsilon=1.0, delta=1e-6, accountant="rdp",
                      stages=(StageBudget(name="discovery", fraction=0.1, epsilon=0.1, delta=1e-6),))
    assert headroom(account, plan, current="generator") is None
