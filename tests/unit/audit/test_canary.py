"""Canary auditing: canaries in the declared domains, the one-run bound's golden values, calibration, power.

False-alarm rates. Every statistical test here is seeded (deterministic); the rates say how likely a
correct implementation would be to fail on a fresh choice of seeds. The one-run bound overstates the
true epsilon with probability at most beta per run (the theorem). For a run count we allow at most 3 of 20
runs above the truth: P[Binomial(20, 0.05) >= 4] = 0.016 at the theorem's worst case. Measured rates
(1,000 seeded runs each, m = 1,000, beta = 0.05, default levels) are lower: 0.031 for scores independent of
the coins, 0.019 and 0.013 for randomized response at epsilon 1 and 2, so the real false-alarm rates of
those tests are 3e-3, 5e-4 and 1e-4. "Never above the truth in all 20 runs" would fail for a correct
implementation with probability up to 1 - 0.95^20 = 0.64 (0.32 and 0.23 at the measured rates): too weak
a test to state, so the count is asserted instead.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logit
from scipy.stats import binom

from safesynth.audit.canary import (
    CanaryAudit,
    audit_canaries,
    canary_scores,
    choose_inclusions,
    default_guesses,
    empirical_epsilon,
    epsilon_lower_bound,
    make_canaries,
    one_run_p_value,
)
from safesynth.schema import pandas_dtype
from tests.helpers import make_spec, mixed_frame, rows_valid

BETA = 0.05
RUNS = 20
MAX_FALSE_ALARMS = 3  # of RUNS: P[Binomial(20, 0.05) >= 4] = 0.016 (see the module docstring)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return make_spec(tmp_path_factory.mktemp("spec"))


def randomized_response(m: int, epsilon: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coins and scores of an exactly epsilon-DP mechanism: each coin flipped with prob 1 / (1 + e^eps)."""
    rng = np.random.default_rng(seed)
    included = choose_inclusions(m, rng)
    flipped = rng.random(m) < 1 / (1 + math.exp(epsilon))
    return included, (included ^ flipped).astype(float)


# ------------------------------------------------------------------------------------------ canaries


def test_canaries_lie_in_the_declared_domains(spec):
    canaries = make_canaries(spec, 500, np.random.default_rng(0))
    assert len(canaries) == 500 and rows_valid(canaries, spec)
    assert list(canaries.columns) == list(spec.columns)
    assert {name: str(canaries[name].dtype) for name in spec.columns} == {
        name: pandas_dtype(col) for name, col in spec.columns.items()}
    assert not canaries.isna().any().any()
    assert not canaries.duplicated().any()  # distinct records (random texts)
    # Uniform over the domains (500 draws): every category and boolean shows up, numbers and dates span
    # most of their range; each would fail with probability below 1e-20.
    assert set(canaries["plan"]) == {"basic", "plus", "pro"} and set(canaries["active"]) == {True, False}
    assert canaries["age"].min() <= 20 and canaries["age"].max() >= 87
    assert canaries["spend"].min() <= 25 and canaries["spend"].max() >= 475
    cents = canaries["spend"].to_numpy(dtype=float) * 100
    assert np.allclose(cents, np.round(cents), rtol=0, atol=1e-6)  # declared precision
    assert (canaries["joined"] == canaries["joined"].dt.normalize()).all()  # day resolution
    joined = canaries["joined"]
    assert joined.min() < pd.Timestamp("2020-04-01") and joined.max() > pd.Timestamp("2024-10-01")
    assert canaries["note"].str.len().between(1, 40).all()
    assert make_canaries(spec, 500, np.random.default_rng(0)).equals(canaries)


def test_canaries_respect_tight_and_odd_domains(tmp_path):
    odd = make_spec(tmp_path, columns={
        "t": {"type": "datetime", "min": "2020-01-01T10:00:00", "max": "2020-01-01T12:00:00"},  # < 1 day
        "x": {"type": "float", "min": 0.001, "max": 0.002, "precision": 2},  # no 2-decimal value inside
        "s": {"type": "text", "max_length": 1},
        "k": {"type": "integer", "min": 5, "max": 5, "nullable": True},
    })
    canaries = make_canaries(odd, 50, np.random.default_rng(1))
    assert rows_valid(canaries, odd) and (canaries["k"] == 5).all()
    assert make_canaries(odd, 0, np.random.default_rng(1)).dtypes.equals(canaries.dtypes)


def test_canaries_refuse_undeclared_domains(tmp_path):
    undeclared = make_spec(tmp_path, columns={"age": {"type": "integer"}},
                           privacy={"allocation": {"discovery": 0.1}})
    with pytest.raises(ValueError, match="declare their domains"):
        make_canaries(undeclared, 10, np.random.default_rng(0))


def test_inclusions_are_fair_independent_coins():
    coins = choose_inclusions(10_000, np.random.default_rng(2))
    assert coins.dtype == bool and coins.shape == (10_000,)
    assert abs(coins.mean() - 0.5) < 0.025  # 5 standard errors: false alarm ~6e-7
    assert abs(np.mean(coins[1:] == coins[:-1]) - 0.5) < 0.025  # no lag-1 dependence
    with pytest.raises(ValueError, match="`m`"):
        choose_inclusions(-1, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------- scores


def test_copied_canaries_are_found_by_the_default_attack(spec):
    canaries = make_canaries(spec, 200, np.random.default_rng(3))
    included = choose_inclusions(200, np.random.default_rng(4))
    synthetic = pd.concat([mixed_frame(300, seed=5), canaries[included]], ignore_index=True)
    scores = canary_scores(synthetic, canaries, spec)
    assert (scores[included] > -1e-6).all() and (scores[~included] < -1e-3).all()  # copies: distance ~0
    audit = audit_canaries(synthetic, canaries, included, spec=spec, delta=1e-6)
    assert isinstance(audit, CanaryAudit) and audit.attack == "distance-to-closest-record"
    assert audit.included == included.sum() and audit.correct == audit.guesses
    assert audit.empirical_epsilon > 2  # 50 of 50 right at beta / 5: logit(0.01^(1/50)) = 2.34
    record = audit.to_dict()
    assert record["differentially_private"] is False and "restricted" in record["note"]
    assert record["guesses"] == audit.guesses and record["levels"] == len(default_guesses(200))


def test_independent_synthetic_rows_give_no_bound(spec):
    # Synthetic rows that never saw a canary: a 0-DP release, so a positive bound has probability <= beta,
    # here 1e-3 (the false-alarm rate of this test).
    canaries = make_canaries(spec, 200, np.random.default_rng(6))
    included = choose_inclusions(200, np.random.default_rng(7))
    audit = audit_canaries(mixed_frame(300, seed=8), canaries, included, spec=spec, delta=1e-6, beta=1e-3)
    assert audit.empirical_epsilon == 0.0 and audit.beta == 1e-3


def test_any_registered_attack_can_score_canaries(spec):
    canaries = make_canaries(spec, 60, np.random.default_rng(9))
    synthetic = mixed_frame(200, seed=10)
    scores = canary_scores(synthetic, canaries, spec, attack="domias", reference=mixed_frame(200, seed=11))
    assert scores.shape == (60,) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="reference"):
        canary_scores(synthetic, canaries, spec, attack="domias")
    with pytest.raises(KeyError, match="must be one of"):
        canary_scores(synthetic, canaries, spec, attack="no-such-attack")


# ----------------------------------------------------------------------------------------- the bound


def test_pure_dp_p_value_is_the_exact_binomial_tail():
    for r, v, eps in ((100, 75, 0.7), (10, 10, 3.0), (1000, 480, 0.0), (5, 0, 1.0)):
        q = math.exp(eps) / (1 + math.exp(eps))
        assert one_run_p_value(canaries=1000, guesses=r, correct=v, epsilon=eps, delta=0.0) == pytest.approx(
            binom.sf(v - 1, r, q), rel=1e-12, abs=1e-300)


def test_bound_reproduces_the_papers_published_values():
    # Steinke, Nasr and Jagielski (arXiv:2305.08846): the example of their Appendix D code, and the
    # bound of their section 7 (m = 100,000 canaries, 1,510 guesses, 1,439 right); printed as 0.673 and 2.675.
    first = epsilon_lower_bound(canaries=1000, guesses=100, correct=75, delta=1e-4, beta=0.05)
    assert first == pytest.approx(0.673, abs=5e-4)
    assert epsilon_lower_bound(canaries=100_000, guesses=1510, correct=1439, delta=1e-5,
                               beta=0.05) == pytest.approx(2.675, abs=1e-3)


def test_pure_dp_bound_is_the_root_of_the_binomial_tail():
    eps = epsilon_lower_bound(canaries=1000, guesses=100, correct=75, delta=0.0, beta=0.05)
    q = math.exp(eps) / (1 + math.exp(eps))
    assert binom.sf(74, 100, q) < 0.05 <= binom.sf(74, 100, math.exp(eps + 1e-9) / (1 + math.exp(eps + 1e-9)))
    # All r guesses right: the tail is q^r, so the bound is logit(beta^(1/r)) in closed form.
    assert epsilon_lower_bound(canaries=50, guesses=50, correct=50, delta=0.0, beta=0.05) == pytest.approx(
        logit(0.05 ** (1 / 50)), abs=1e-9)


@settings(max_examples=50)
@given(r=st.integers(1, 400), frac=st.floats(0.0, 1.0), delta=st.sampled_from([1e-8, 1e-6, 1e-4]),
       beta=st.sampled_from([0.01, 0.05, 0.2]))
def test_delta_never_raises_the_bound_and_the_bound_is_rejected(r, frac, delta, beta):
    v, m = round(frac * r), 2 * r
    pure = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=0.0, beta=beta)
    approx = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, beta=beta)
    assert 0.0 <= approx <= pure < math.inf
    if approx > 0:
        assert one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=approx, delta=delta) < beta


def test_delta_weakens_the_bound_until_nothing_is_significant():
    bounds = [epsilon_lower_bound(canaries=1000, guesses=100, correct=75, delta=d, beta=0.05)
              for d in (0.0, 1e-6, 1e-4, 1e-3, 1e-2)]
    assert bounds == sorted(bounds, reverse=True) and bounds[0] > bounds[2] > 0 and bounds[-1] == 0.0


def test_random_guesses_give_no_bound():
    # Scores independent of the coins (a 0-DP mechanism): bound > 0 has probability <= beta per run
    # (measured 0.031); at most 3 of 20 runs, false alarm 3e-3 (module docstring).
    bounds = []
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        included = choose_inclusions(1000, rng)
        bounds.append(empirical_epsilon(rng.random(1000), included, delta=0.0, beta=BETA).epsilon)
    assert sum(b > 0 for b in bounds) <= MAX_FALSE_ALARMS


def test_perfect_attack_bound_is_large_finite_and_grows_with_m():
    bounds = {}
    for m in (100, 1000, 10_000):
        included = choose_inclusions(m, np.random.default_rng(m))
        result = empirical_epsilon(included.astype(float), included, delta=0.0, beta=BETA)
        assert result.correct == result.guessed_in + result.guessed_out
        # The most any m canaries can show: all m guesses right at beta / levels, logit((beta/L)^(1/m)).
        assert result.epsilon <= logit((BETA / result.levels) ** (1 / m))
        bounds[m] = result.epsilon
    assert 1.0 < bounds[100] < bounds[1000] < bounds[10_000] < 10
    assert bounds[1000] > 4


@pytest.mark.parametrize("epsilon", [1.0, 2.0])
def test_bound_does_not_overstate_randomized_response(epsilon):
    # Exactly epsilon-DP; exceedance per run <= beta (measured 0.019 at eps 1, 0.013 at eps 2), so at most
    # 3 of 20 runs above epsilon: false alarm 5e-4 and 1e-4. Power: the mean bound over the runs is 0.82
    # (eps 1) and 1.73 (eps 2) over 1,000 runs, so an audit that merely returned 0 fails the last line.
    bounds = []
    for seed in range(100, 100 + RUNS):
        included, scores = randomized_response(1000, epsilon, seed=seed)
        bounds.append(empirical_epsilon(scores, included, delta=0.0, beta=BETA).epsilon)
    bounds = np.array(bounds)
    assert (bounds > epsilon).sum() <= MAX_FALSE_ALARMS
    assert bounds.mean() > 0.6 * epsilon


def test_approximate_dp_bound_stays_below_the_pure_one_on_randomized_response():
    for seed in range(5):
        included, scores = randomized_response(1000, 1.0, seed=200 + seed)
        pure = empirical_epsilon(scores, included, delta=0.0).epsilon
        approx = empirical_epsilon(scores, included, delta=1e-5).epsilon
        assert 0 < approx <= pure


def test_levels_are_public_and_corrected_for():
    assert default_guesses(1000) == ((50, 0), (100, 0), (250, 0), (500, 0), (500, 500))
    assert default_guesses(1) == ((1, 0),) and default_guesses(0) == ()
    included, scores = randomized_response(1000, 2.0, seed=300)
    levels = default_guesses(1000)
    result = empirical_epsilon(scores, included, delta=1e-6, beta=BETA)
    order = np.argsort(-scores, kind="stable")
    per_level = []
    for r_in, r_out in levels:
        v = int(included[order[:r_in]].sum() + (~included[order[1000 - r_out:]]).sum())
        per_level.append(epsilon_lower_bound(canaries=1000, guesses=r_in + r_out, correct=v, delta=1e-6,
                                             beta=BETA / len(levels)))
    assert result.epsilon == max(per_level) and result.levels == len(levels) and result.beta == BETA
    single = empirical_epsilon(scores, included, delta=1e-6, beta=BETA, guesses=[(500, 500)])
    assert single.levels == 1 and single.epsilon >= per_level[-1]  # one level: no correction
    assert empirical_epsilon(np.zeros(0), np.zeros(0, dtype=bool), delta=0.0).epsilon == 0.0


def test_bad_inputs_are_refused():
    coins = np.array([True, False, True])
    with pytest.raises(ValueError, match="same length"):
        empirical_epsilon(np.zeros(2), coins, delta=0.0)
    with pytest.raises(ValueError, match="finite"):
        empirical_epsilon(np.array([0.0, np.nan, 1.0]), coins, delta=0.0)
    with pytest.raises(ValueError, match="at most m"):
        empirical_epsilon(np.zeros(3), coins, delta=0.0, guesses=[(2, 2)])
    with pytest.raises(ValueError, match="`beta`"):
        empirical_epsilon(np.zeros(3), coins, delta=0.0, beta=1.0)
    with pytest.raises(ValueError, match="`delta`"):
        epsilon_lower_bound(canaries=3, guesses=3, correct=3, delta=1.0, beta=0.05)
    with pytest.raises(ValueError, match="`correct`"):
        one_run_p_value(canaries=3, guesses=2, correct=3, epsilon=1.0, delta=0.0)
