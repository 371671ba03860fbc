"""The in-context mechanism without a model: sensitivity, noise scale, subsample, accounting, budget stop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from safesynth.generator.incontext.mechanism import (
    MAX_SAMPLE_RATE,
    SENSITIVITY,
    aggregate,
    generation_event,
    noisy_argmax,
    plan_generation,
    poisson_partition,
    restrict,
    row_event,
    rows_within_budget,
    sample_rate_for,
)
from safesynth.privacy.accountant import compose_epsilon
from safesynth.privacy.noise import SeededNoise

VOCAB, K = 50, 8


def prompt_logits(examples: np.ndarray, *, seed: int) -> np.ndarray:
    """A stand-in for a model: any deterministic function of a prompt's examples (and the public prefix)."""
    rng = np.random.default_rng([seed, *map(int, examples)])
    return rng.normal(0.0, 3.0, VOCAB)


def summed(parts: list[np.ndarray], candidates: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    per_prompt = restrict(np.stack([prompt_logits(p, seed=seed)[candidates] for p in parts]))
    return aggregate(per_prompt), per_prompt


@given(records=st.integers(0, 60), seed=st.integers(0, 2**32 - 1),
       rate=st.floats(0.05, MAX_SAMPLE_RATE), prompts=st.integers(1, 8))
def test_adding_one_record_changes_one_prompt_and_the_sum_by_at_most_sqrt2(records, seed, rate, prompts):
    # The same per-record draws with and without the added (last) record: a coupling of the two subsamples.
    without = poisson_partition(records, sample_rate=rate, prompts=prompts, rng=np.random.default_rng(seed))
    with_one = poisson_partition(records + 1, sample_rate=rate, prompts=prompts, rng=np.random.default_rng(seed))
    changed = [i for i in range(prompts) if not np.array_equal(without[i], with_one[i])]
    assert len(changed) <= 1
    if changed:
        assert set(with_one[changed[0]]) - set(without[changed[0]]) == {records}
    candidates = np.argsort(prompt_logits(np.array([], dtype=np.int64), seed=seed))[-K:]  # the public top-k
    s, p = summed(without, candidates, seed=seed)
    s_one, p_one = summed(with_one, candidates, seed=seed)
    assert np.allclose(p.sum(axis=1), 1.0) and np.allclose(p_one.sum(axis=1), 1.0)
    assert np.linalg.norm(s_one - s) <= SENSITIVITY + 1e-12


def test_two_probability_vectors_reach_the_sqrt2_bound():
    far = restrict(np.array([[50.0, -50.0], [-50.0, 50.0]]))
    assert math.isclose(np.linalg.norm(far[0] - far[1]), SENSITIVITY, rel_tol=1e-9)


def test_restrict_is_the_softmax_renormalised_over_the_candidates():
    logits = np.random.default_rng(1).normal(size=(3, VOCAB))
    candidates = np.array([4, 9, 17])
    full = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum(axis=1, keepdims=True)
    expected = full[:, candidates] / full[:, candidates].sum(axis=1, keepdims=True)
    assert np.allclose(restrict(logits[:, candidates], temperature=0.7), expected)


class Recording:
    """A test noise source that keeps the noise it added."""

    secure = False

    def __init__(self, seed: int) -> None:
        self.inner, self.noise = SeededNoise(seed), []

    def laplace(self, values, *, scale, discrete=False):
        raise AssertionError("the in-context step draws Gaussian noise only")

    def gaussian(self, values, *, scale, discrete=False):
        out = self.inner.gaussian(values, scale=scale, discrete=discrete)
        self.noise.extend(out - values)
        return out


ALPHA = 1e-6  # false-alarm rate of each KS test below


def test_noise_has_std_sigma_sqrt2_and_the_test_has_power():
    sigma = 1.7
    source = Recording(seed=7)
    for _ in range(250):
        noisy_argmax(np.zeros(K), noise_multiplier=sigma, noise=source)
    drawn = np.asarray(source.noise)  # 2000 draws
    assert stats.kstest(drawn, "norm", args=(0, sigma * SENSITIVITY)).pvalue > ALPHA
    for wrong in (0.7, 1.3):  # power: the same draws reject a scale 30% off
        assert stats.kstest(drawn, "norm", args=(0, wrong * sigma * SENSITIVITY)).pvalue < ALPHA


def test_noisy_argmax_picks_the_clear_winner_at_low_noise():
    assert noisy_argmax(np.array([0.0, 8.0, 0.0]), noise_multiplier=0.01, noise=SeededNoise(0)) == 1


def test_poisson_inclusion_rate_and_prompt_assignment_are_uniform():
    rate, prompts, records, trials = 0.1, 4, 1000, 200
    rng = np.random.default_rng(3)
    sizes = np.zeros(prompts)
    for _ in range(trials):
        sizes += [len(p) for p in poisson_partition(records, sample_rate=rate, prompts=prompts, rng=rng)]
    n = records * trials
    # Two-sided binomial test of the inclusion rate, false-alarm rate ALPHA; 5 sd is ~5 % of the rate here,
    # so a rate off by 10 % would be rejected.
    assert stats.binomtest(int(sizes.sum()), n, rate).pvalue > ALPHA
    assert stats.binomtest(int(sizes.sum()), n, rate * 1.1).pvalue < ALPHA
    assert stats.chisquare(sizes).pvalue > ALPHA  # each joined record's prompt is uniform


def test_sample_rate_comes_from_the_noisy_count_and_is_capped():
    assert sample_rate_for(1000.0, prompts=8, shots=4) == 32 / 1000
    assert sample_rate_for(10.0, prompts=8, shots=4) == MAX_SAMPLE_RATE
    assert sample_rate_for(-5.0, prompts=8, shots=4) == MAX_SAMPLE_RATE


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_matches_dp_accounting_on_the_same_composed_event(accountant):
    q, sigma, tokens, rows, delta = 0.05, 4.0, 16, 30, 1e-5
    expected_event = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma / math.sqrt(tokens))), rows)
    acc = (rdp_privacy_accountant.RdpAccountant() if accountant == "rdp"
           else pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4))
    acc.compose(expected_event)
    ours = compose_epsilon([generation_event(sample_rate=q, noise_multiplier=sigma, tokens=tokens, rows=rows)],
                           delta=delta, accountant=accountant)
    assert math.isclose(ours, acc.get_epsilon(delta), rel_tol=1e-9)


def test_t_gaussian_steps_on_one_subsample_are_one_gaussian_at_sigma_over_sqrt_t():
    sigma, tokens, delta = 3.0, 25, 1e-6
    steps = rdp_privacy_accountant.RdpAccountant()
    steps.compose(dp_event.GaussianDpEvent(sigma), tokens)
    one = rdp_privacy_accountant.RdpAccountant()
    one.compose(row_event(sample_rate=1.0, noise_multiplier=sigma, tokens=tokens).event)
    assert np.allclose(steps._rdp, one._rdp, rtol=1e-12)  # noqa: SLF001 - the RDP curves themselves
    assert math.isclose(steps.get_epsilon(delta), one.get_epsilon(delta), rel_tol=1e-12)


def test_generation_stops_at_the_budget():
    kwargs = {"tokens": 16, "epsilon": 2.0, "delta": 1e-5, "accountant": "rdp"}
    plan = plan_generation(labels=[0] * 500, sample_rates=[0.04], noise_multiplier=6.0, **kwargs)
    assert 0 < plan.rows < 500

    def eps(rows: int) -> float:
        return compose_epsilon([generation_event(sample_rate=0.04, noise_multiplier=6.0, tokens=16, rows=rows)],
                               delta=1e-5, accountant="rdp")

    assert eps(plan.rows) <= 2.0 < eps(plan.rows + 1)
    assert compose_epsilon([plan.event()], delta=1e-5, accountant="rdp") == eps(plan.rows)


def test_default_noise_buys_every_row_asked_for_within_the_budget():
    plan = plan_generation(labels=[0] * 40, sample_rates=[0.1], tokens=32, noise_multiplier=None, epsilon=1.0,
                           delta=1e-6, accountant="rdp")
    assert plan.rows == 40
    assert compose_epsilon([plan.event()], delta=1e-6, accountant="rdp") <= 1.0


@settings(max_examples=30)  # each example calibrates and bisects (~0.5 s)
@given(epsilon=st.floats(0.2, 8.0), rate=st.floats(0.001, MAX_SAMPLE_RATE), rows=st.integers(1, 300),
       sigma=st.one_of(st.none(), st.floats(0.5, 20.0)))
def test_plan_never_overshoots_the_budget(epsilon, rate, rows, sigma):
    plan = plan_generation(labels=[0] * rows, sample_rates=[rate], tokens=8, noise_multiplier=sigma,
                           epsilon=epsilon, delta=1e-6, accountant="rdp")
    assert compose_epsilon([plan.event()], delta=1e-6, accountant="rdp") <= epsilon


def test_conditioned_plan_charges_the_worst_label_and_dominates_each_label():
    labels = [0, 1, 1, 2, 1, 0, 1, 1]  # label 1 has the most texts; label 2 the highest rate
    rates = [0.05, 0.02, 0.3]
    plan = plan_generation(labels=labels, sample_rates=rates, tokens=4, noise_multiplier=2.0, epsilon=50.0,
                           delta=1e-6, accountant="rdp")
    assert (plan.rows, plan.rows_per_label, plan.sample_rate) == (8, 5, 0.3)
    charged = compose_epsilon([plan.event()], delta=1e-6, accountant="rdp")
    for label, rate in enumerate(rates):
        own = generation_event(sample_rate=rate, noise_multiplier=2.0, tokens=4, rows=labels.count(label))
        assert compose_epsilon([own], delta=1e-6, accountant="rdp") <= charged


def test_rows_within_budget_is_zero_when_one_row_is_too_expensive():
    assert rows_within_budget(
        lambda r: generation_event(sample_rate=0.5, noise_multiplier=0.1, tokens=1, rows=r),
        max_rows=10, epsilon=0.01, delta=1e-6, accountant="rdp") == 0


def test_the_mechanism_and_the_prompts_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, safesynth.generator.incontext.mechanism, safesynth.generator.incontext.prompt, "
            "safesynth.generator.incontext; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
