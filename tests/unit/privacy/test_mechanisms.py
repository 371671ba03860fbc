"""Mechanisms state OpenDP's own privacy map, calibrate against it, and account events that agree with it."""

from __future__ import annotations

import math

import opendp.prelude as dp
import pytest
from dp_accounting import dp_event
from hypothesis import given
from hypothesis import strategies as st

from safesynth.privacy import mechanisms
from safesynth.privacy.accountant import compose_epsilon
from safesynth.privacy.mechanisms import GaussianMechanism, LaplaceMechanism, least_scale

dp.enable_features("contrib")


def _opendp_laplace(scale: float, d_in: float, *, discrete: bool = False) -> float:
    """The map of a measurement built here, independently of safesynth.privacy.noise."""
    if discrete:
        meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale)
        return meas.map(int(d_in))
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    return dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=scale).map(d_in)


def _opendp_gaussian_rho(scale: float, d_in: float) -> float:
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale).map(d_in)


@pytest.mark.parametrize(("sensitivity", "scale"), [(1.0, 1 / 0.095), (2.0, 0.3), (3.0, 7.0), (1.0, 1 / 3)])
def test_laplace_epsilon_is_opendps_map_not_a_python_formula(sensitivity, scale):
    mech = LaplaceMechanism(sensitivity=sensitivity, scale=scale)
    assert mech.epsilon == _opendp_laplace(scale, sensitivity)
    assert mech.epsilon >= sensitivity / scale  # OpenDP rounds up, never down


def test_discrete_laplace_epsilon_is_opendps_map_at_the_integer_sensitivity():
    mech = LaplaceMechanism(sensitivity=1.0, scale=1 / 0.19, discrete=True)
    assert mech.epsilon == _opendp_laplace(1 / 0.19, 1, discrete=True)
    event = mech.event()
    assert isinstance(event, dp_event.DiscreteLaplaceDpEvent) and event.sensitivity == 1
    assert event.noise_parameter * event.sensitivity >= mech.epsilon


@pytest.mark.parametrize(("sensitivity", "scale"), [(1.0, 0.3), (math.sqrt(3), 2.0), (1.0, 10.0)])
def test_gaussian_rho_is_opendps_map_and_the_event_states_no_less(sensitivity, scale):
    mech = GaussianMechanism(sensitivity=sensitivity, scale=scale)
    assert mech.rho == _opendp_gaussian_rho(scale, sensitivity)
    event = mech.event()
    assert isinstance(event, dp_event.GaussianDpEvent)
    assert 1.0 / (2.0 * event.noise_multiplier**2) >= mech.rho


@given(epsilon=st.floats(1e-3, 50.0), sensitivity=st.sampled_from([1.0, 2.0, 0.5, 7.0]),
       discrete=st.booleans())
def test_calibrated_laplace_never_exceeds_the_target_by_opendps_map(epsilon, sensitivity, discrete):
    mech = LaplaceMechanism.calibrate(sensitivity=sensitivity, epsilon=epsilon, discrete=discrete)
    assert mech.epsilon <= epsilon
    assert mech.epsilon >= epsilon * (1 - 1e-12)  # the least such scale, to float precision
    event = mech.event()
    if discrete:
        assert event.noise_parameter * event.sensitivity >= mech.epsilon
    else:
        assert 1.0 / event.noise_multiplier >= mech.epsilon


def test_calibration_absorbs_a_float_safe_slack_in_the_map(monkeypatch):
    # OpenDP may state, e.g., 2.0000000186 for a closed-form 2.0: calibration must still fit the target.
    real = mechanisms.privacy_map
    monkeypatch.setattr(mechanisms, "privacy_map",
                        lambda kind, **kw: real(kind, **kw) * (1.0 + 9.3e-9))
    mech = LaplaceMechanism.calibrate(sensitivity=1.0, epsilon=2.0)
    assert mech.epsilon <= 2.0
    assert mech.scale > 0.5 and mech.scale == pytest.approx(0.5 * (1 + 9.3e-9), rel=1e-12)
    assert 1.0 / mech.event().noise_multiplier >= mech.epsilon


def test_least_scale_returns_the_fitting_end():
    cost = lambda s: 1.0 / s * (1.0 + 1e-6)  # noqa: E731
    scale = least_scale(cost, start=1.0, target=1.0)
    assert cost(scale) <= 1.0
    assert cost(math.nextafter(scale, 0.0)) > 1.0
    assert least_scale(lambda s: 1.0 / s, start=4.0, target=0.25) == 4.0


@pytest.mark.parametrize("target", [0.3, 1.0, 3.0])
def test_calibrated_gaussian_states_at_most_the_target(target):
    mech = GaussianMechanism.calibrate(sensitivity=2.0, epsilon=target, delta=1e-6)
    assert compose_epsilon([mech.event()], delta=1e-6) <= target
    assert mech.rho == _opendp_gaussian_rho(mech.scale, 2.0)
