"""The marginals generator: calibration to the spec's epsilon, noise scale, validity, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from safesynth.generator import get_backend
from safesynth.privacy import OpenDPNoise, ReleaseAccount, SeededNoise, plan_budget
from tests.helpers import make_spec, mixed_frame, rows_valid

ALPHA = 1e-6  # false-alarm rate of the statistical tests below


class RecordingNoise:
    """Delegates to a real source and keeps (input, output, scale) so tests can see the noise."""

    def __init__(self, inner):
        self.inner, self.secure, self.calls = inner, inner.secure, []

    def laplace(self, values, *, scale, discrete=False):
        out = self.inner.laplace(values, scale=scale, discrete=discrete)
        self.calls.append(("laplace", np.asarray(values, float), np.asarray(out, float), scale))
        return out

    def gaussian(self, values, *, scale, discrete=False):
        out = self.inner.gaussian(values, scale=scale, discrete=discrete)
        self.calls.append(("gaussian", np.asarray(values, float), np.asarray(out, float), scale))
        return out


def fit(spec, frame, noise):
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    model = get_backend("marginals").fit(frame, spec=spec, plan=plan_budget(spec), account=account,
                                         noise=noise, workdir=None)
    return model, account


def test_laplace_scale_is_l1_sensitivity_over_epsilon_and_spend_is_exact(tmp_path):
    spec = make_spec(tmp_path, privacy={"epsilon": 2.0})
    stage = plan_budget(spec).stage("generator")  # the release's epsilon less the small `repairs` share
    noise = RecordingNoise(SeededNoise(0))
    _, account = fit(spec, mixed_frame(300), noise)
    (kind, _, _, scale), = noise.calls
    units = len(spec.columns) + 1  # one text column adds a character vector
    stage = plan_budget(spec).stage("generator").epsilon  # 2.0 less the audit's share
    assert kind == "laplace" and scale == pytest.approx(units / stage)
    assert account.basic_epsilon == pytest.approx(stage)
    assert account.epsilon <= stage + 1e-12
    assert account.spends[0].secure_noise is False  # seeded noise is recorded as insecure


def test_gaussian_spend_fits_the_budget_and_is_tight(tmp_path):
    spec = make_spec(tmp_path, privacy={"epsilon": 1.0, "delta": 1e-6, "mechanism": "gaussian",
                                        "allocation": {"repairs": 0.0}})
    _, account = fit(spec, mixed_frame(300), SeededNoise(1))
    stage = plan_budget(spec).stage("generator")  # 1.0 less the audit's share
    assert account.epsilon <= stage.epsilon
    assert account.epsilon > 0.99 * stage.epsilon  # calibration is tight, not wasteful
    assert account.epsilon_by("rdp") <= stage.epsilon


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_released_noise_has_the_calibrated_scale(tmp_path, mechanism):
    """KS test of the noise actually added (OpenDP's sampler): the true scale passes at alpha 1e-6 and
    a 30% scale error is rejected, which shows the test has power."""
    columns = {f"c{i}": {"type": "integer", "min": 0, "max": 2999} for i in range(2)}
    spec = make_spec(tmp_path, columns=columns, generator={"kind": "marginals", "bins": 3000},
                     privacy={"epsilon": 1.0, "delta": 1e-6, "mechanism": mechanism,
                              "allocation": {"repairs": 0.0}})
    frame = mixed_frame(10)[[]].assign(c0=np.arange(10), c1=np.arange(10)).astype("Int64")
    noise = RecordingNoise(OpenDPNoise())
    fit(spec, frame, noise)
    (_, before, after, scale), = noise.calls
    residual = after - before
    assert len(residual) == 6000
    dist = stats.laplace if mechanism == "laplace" else stats.norm
    assert stats.kstest(residual, dist(scale=scale).cdf).pvalue > ALPHA
    assert stats.kstest(residual, dist(scale=0.7 * scale).cdf).pvalue < ALPHA
    assert stats.kstest(residual, dist(scale=1.3 * scale).cdf).pvalue < ALPHA
    if mechanism == "laplace":  # L1 sensitivity 2 (two columns) / the generator's epsilon
        assert scale == pytest.approx(2 / plan_budget(spec).stage("generator").epsilon)


def test_samples_satisfy_the_schema_and_are_deterministic(tmp_path):
    spec = make_spec(tmp_path)
    model, _ = fit(spec, mixed_frame(400), SeededNoise(2))
    a = model.sample(1000, seed=7)
    assert rows_valid(a, spec)
    assert a.equals(model.sample(1000, seed=7))
    assert not a.equals(model.sample(1000, seed=8))
    model.save(tmp_path / "m")
    again = get_backend("marginals").load(tmp_path / "m", spec=spec).sample(1000, seed=7)
    assert a.equals(again)


def test_high_epsilon_marginals_track_the_data(tmp_path):
    spec = make_spec(tmp_path, privacy={"epsilon": 50.0, "lifetime_epsilon": 100.0})
    frame = mixed_frame(4000)
    model, _ = fit(spec, frame, SeededNoise(3))
    synth = model.sample(4000, seed=1)
    for col in ("plan", "active"):
        p = frame[col].astype(str).value_counts(normalize=True)
        q = synth[col].astype(str).value_counts(normalize=True)
        tvd = 0.5 * p.sub(q, fill_value=0).abs().sum()
        assert tvd < 0.05, (col, tvd)
    assert abs(synth["age"].mean() - frame["age"].mean()) < 2.0


def test_low_epsilon_is_noisier_than_high_epsilon(tmp_path):
    frame = mixed_frame(2000)
    errs = []
    for eps in (0.05, 20.0):
        spec = make_spec(tmp_path, privacy={"epsilon": eps, "lifetime_epsilon": 100.0})
        model, _ = fit(spec, frame, SeededNoise(4))
        synth = model.sample(4000, seed=1)
        p = frame["plan"].astype(str).value_counts(normalize=True)
        q = synth["plan"].astype(str).value_counts(normalize=True)
        errs.append(0.5 * p.sub(q, fill_value=0).abs().sum())
    assert errs[0] > errs[1]
    assert math.isfinite(errs[0])


def test_records_outside_the_domain_are_repaired_not_raised(tmp_path):
    """One outlier or unknown category (e.g. below a discovered domain's noise threshold) never fails the fit."""
    spec = make_spec(tmp_path)
    frame = mixed_frame(300)
    frame.loc[0, "age"] = 1_000  # clamped to 90
    frame.loc[1, "plan"] = "rare"  # nullable: set to null
    frame.loc[2, "note"] = "x" * 500  # truncated
    frame.loc[3, "spend"] = -1e9  # clamped to 0
    model, account = fit(spec, frame, SeededNoise(5))
    assert rows_valid(model.sample(500, seed=0), spec)
    assert [s.stage for s in account.spends] == ["generator"]  # the DP count of repairs is the stage's job
