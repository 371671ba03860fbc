"""Statistical tests of the secure samplers (OpenDPNoise), in the style of OpenDP's and Tumult's.

Every test has a false-alarm rate of ALPHA = 1e-6 (a correct sampler fails once in a million runs) and
proves its power: the same sample is rejected against a reference whose scale is 30% off (x0.7, x1.3),
and the independence check rejects a duplicated or repeated sample (testing the tester).
OpenDP draws from the OS CSPRNG, so these draws cannot be seeded; the tiny ALPHA is what makes them
deterministic in practice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from safesynth.privacy.noise import OpenDPNoise

ALPHA = 1e-6
N = 20_000  # power: KS distance at 1.3x scale is ~0.05; the critical value at N, ALPHA is ~0.019
Z_CRIT = stats.norm.isf(ALPHA / 2)  # two-sided, ~4.89
SCALES = {"laplace": 3.0, "gaussian": 3.0}

pytestmark = pytest.mark.slow


def continuous_cdf(kind: str, scale: float):
    if kind == "laplace":
        return stats.laplace(scale=scale).cdf
    return stats.norm(scale=scale).cdf


def discrete_pmf(kind: str, scale: float, support: np.ndarray) -> np.ndarray:
    """pmf of the discrete Laplace (exp(-|x|/scale)) or discrete Gaussian (exp(-x^2/2 scale^2)) on ints."""
    wide = np.arange(-int(60 * scale) - 60, int(60 * scale) + 61)
    logw = -np.abs(wide) / scale if kind == "laplace" else -(wide**2) / (2 * scale**2)
    weights = np.exp(logw - logw.max())
    pmf = weights / weights.sum()
    return pmf[np.searchsorted(wide, support)]


def chi_square_pvalue(sample: np.ndarray, kind: str, scale: float) -> float:
    """Goodness of fit on the integers with expected count >= 5, tails pooled into two bins."""
    support = np.arange(sample.min() - 1, sample.max() + 2)
    pmf = discrete_pmf(kind, scale, support)
    core = support[pmf * len(sample) >= 5]
    lo, hi = core.min(), core.max()
    observed = [np.sum(sample < lo)] + [np.sum(sample == v) for v in range(lo, hi + 1)] + [np.sum(sample > hi)]
    inner = discrete_pmf(kind, scale, np.arange(lo, hi + 1))
    tail = (1.0 - inner.sum()) / 2.0  # both distributions are symmetric
    expected = np.concatenate([[tail], inner, [tail]]) * len(sample)
    return float(stats.chisquare(observed, expected).pvalue)


def fit_pvalue(sample: np.ndarray, kind: str, scale: float, discrete: bool) -> float:
    if discrete:
        return chi_square_pvalue(sample, kind, scale)
    return float(stats.kstest(sample, continuous_cdf(kind, scale)).pvalue)


def lag_correlation_z(sample: np.ndarray) -> float:
    """z-score of the lag-1 correlation (~N(0, 1) for independent draws)."""
    x = sample - sample.mean()
    r = float(np.dot(x[:-1], x[1:]) / np.dot(x, x))
    return r * math.sqrt(len(x))


def cross_correlation_z(a: np.ndarray, b: np.ndarray) -> float:
    r = float(np.corrcoef(a, b)[0, 1])
    return r * math.sqrt(len(a))


def draw(kind: str, discrete: bool, n: int = N) -> np.ndarray:
    zeros = np.zeros(n, dtype=np.int64 if discrete else np.float64)
    return getattr(OpenDPNoise(), kind)(zeros, scale=SCALES[kind], discrete=discrete)


@pytest.fixture(scope="module", params=[(k, d) for k in ("laplace", "gaussian") for d in (False, True)],
                ids=lambda p: f"{p[0]}-{'discrete' if p[1] else 'continuous'}")
def sampler(request):
    kind, discrete = request.param
    return kind, discrete, draw(kind, discrete)


def test_sampler_fits_its_distribution_at_the_true_scale(sampler):
    kind, discrete, sample = sampler
    if discrete:
        assert sample.dtype == np.int64
    assert fit_pvalue(sample, kind, SCALES[kind], discrete) > ALPHA


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_fit_test_rejects_a_thirty_percent_scale_error(sampler, factor):
    kind, discrete, sample = sampler
    assert fit_pvalue(sample, kind, SCALES[kind] * factor, discrete) < ALPHA


def test_draws_are_independent_within_and_across_calls(sampler):
    kind, discrete, sample = sampler
    assert abs(lag_correlation_z(sample.astype(float))) < Z_CRIT
    other = draw(kind, discrete, n=5_000).astype(float)
    assert abs(cross_correlation_z(sample[:5_000].astype(float), other)) < Z_CRIT


def test_noise_is_centred_on_the_input_values():
    values = np.arange(-1000, 1000, dtype=np.int64)
    noisy = OpenDPNoise().laplace(values, scale=2.0, discrete=True)
    residual = (noisy - values).astype(float)
    # Mean of 2000 discrete Laplace(2) draws: sd = sqrt(2 p)/(1-p) / sqrt(n), p = e^-0.5, about 0.06.
    sd = math.sqrt(2 * math.exp(-0.5)) / (1 - math.exp(-0.5)) / math.sqrt(len(values))
    assert abs(residual.mean()) < Z_CRIT * sd
    assert abs(cross_correlation_z(residual, values.astype(float))) < Z_CRIT


# ---------------------------------------------------------------- negative controls (test the tester)


def test_independence_check_rejects_a_duplicated_sample():
    sample = draw("laplace", False, n=10_000)
    duplicated = np.repeat(sample[:5_000], 2)  # every draw used twice in a row
    assert abs(lag_correlation_z(duplicated)) > Z_CRIT


def test_independence_check_rejects_noise_reused_across_calls():
    sample = draw("gaussian", True, n=5_000).astype(float)
    correlated = sample + 0.3 * draw("gaussian", True, n=5_000).astype(float)  # shares most of its noise
    assert abs(cross_correlation_z(sample, correlated)) > Z_CRIT


def test_fit_test_rejects_a_sample_of_the_wrong_shape():
    gaussian = draw("gaussian", False, n=N)
    matched = gaussian * (SCALES["laplace"] * math.sqrt(2) / SCALES["gaussian"])  # same variance, wrong shape
    assert fit_pvalue(matched, "laplace", SCALES["laplace"], False) < ALPHA
