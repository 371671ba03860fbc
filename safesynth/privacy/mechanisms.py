"""Laplace and Gaussian mechanisms that state their privacy cost before touching data.

The neighbouring relation everywhere is add/remove one record (unbounded DP), the relation under which
Poisson-subsampled DP-SGD is analysed, so all stages compose in one accountant.

Each mechanism is a frozen value: ``LaplaceMechanism(sensitivity=1, scale=2.0).event()`` is its
`dp_accounting` event (no data needed); ``.release(values, noise=...)`` adds the noise.

Stated cost = OpenDP's own privacy map. The noise is drawn by an OpenDP measurement
(:class:`~safesynth.privacy.noise.OpenDPNoise`), and the cost a mechanism states is that measurement's
``map(d_in)`` (:func:`~safesynth.privacy.noise.privacy_map`), not a formula re-derived in Python: a Laplace
mechanism's ``epsilon``, a Gaussian mechanism's zCDP ``rho``. OpenDP rounds its maps up where float
arithmetic would round (so ``epsilon`` may be an ulp or more above ``sensitivity / scale``); calibration
therefore searches for the least scale whose *mapped* cost fits the target, and the `dp_accounting` event
used for composition is derived from the mapped cost (a Laplace event with ``1 / epsilon`` as its noise
multiplier, a Gaussian with ``1 / sqrt(2 rho)``), rounded so that it never states less than OpenDP does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event

from safesynth.errors import InternalError
from safesynth.privacy.noise import NoiseSource, privacy_map

__all__ = ["GaussianMechanism", "LaplaceMechanism", "Mechanism", "least_scale", "make_mechanism"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LaplaceMechanism:
    """Adds Laplace noise of ``scale`` to a statistic with L1 ``sensitivity``.

    Privacy:
        Pure ``epsilon``-DP under add/remove-one-record, provided the statistic's L1 sensitivity really is
        ``sensitivity``; ``epsilon`` is OpenDP's privacy map of ``make_laplace`` at ``d_in = sensitivity``
        (``sensitivity / scale``, rounded up). Accounted as ``LaplaceDpEvent(1 / epsilon)``. The discrete
        variant (``d_in = ceil(sensitivity)``) has a worse privacy-loss distribution (+-epsilon, as
        randomized response, not spread over [-epsilon, epsilon]), so it is accounted as
        ``DiscreteLaplaceDpEvent(epsilon / d_in, d_in)``, never as the continuous event.
    """

    sensitivity: float
    scale: float
    discrete: bool = False

    def __post_init__(self) -> None:
        if not self.sensitivity > 0:
            raise ValueError(f"`sensitivity` ({self.sensitivity}) must be > 0")
        if not self.scale > 0 or not np.isfinite(self.scale):
            raise ValueError(f"`scale` ({self.scale}) must be finite and > 0")

    @property
    def d_in(self) -> float:
        """The sensitivity in OpenDP's input metric (integer-valued statistics: rounded up)."""
        return float(math.ceil(self.sensitivity)) if self.discrete else float(self.sensitivity)

    @property
    def epsilon(self) -> float:
        """OpenDP's privacy map of the measurement that draws the noise, at ``d_in``."""
        return privacy_map("laplace", scale=self.scale, d_in=self.d_in, discrete=self.discrete)

    @property
    def delta(self) -> float:
        return 0.0

    @property
    def noise_multiplier(self) -> float:
        """The accounted noise multiplier: ``1 / epsilon``, rounded down (so the event's epsilon >= ours)."""
        epsilon = self.epsilon
        return _rounded(1.0 / epsilon, down=True, ok=lambda m: 1.0 / m >= epsilon)

    def event(self) -> dp_event.DpEvent:
        if self.discrete:
            epsilon, k = self.epsilon, math.ceil(self.sensitivity)
            parameter = _rounded(epsilon / k, down=False, ok=lambda p: p * k >= epsilon)
            return dp_event.DiscreteLaplaceDpEvent(parameter, k)
        return dp_event.LaplaceDpEvent(noise_multiplier=self.noise_multiplier)

    def release(self, values: np.ndarray, *, noise: NoiseSource) -> np.ndarray:
        return noise.laplace(np.asarray(values), scale=self.scale, discrete=self.discrete)

    @classmethod
    def calibrate(cls, *, sensitivity: float, epsilon: float, discrete: bool = False) -> LaplaceMechanism:
        """The least noise whose OpenDP-mapped ``epsilon`` is at most the target (to float precision).

        Starts at the closed form ``d_in / epsilon`` and, where OpenDP's map rounds above the target,
        raises the scale until it fits: the result never states more than ``epsilon``.
        """
        if not epsilon > 0 or not math.isfinite(epsilon):
            raise ValueError(f"`epsilon` ({epsilon}) must be finite and > 0")
        d_in = cls(sensitivity=sensitivity, scale=1.0, discrete=discrete).d_in
        scale = least_scale(lambda s: cls(sensitivity=sensitivity, scale=s, discrete=discrete).epsilon,
                            start=d_in / epsilon, target=epsilon)
        return cls(sensitivity=sensitivity, scale=scale, discrete=discrete)


@dataclass(frozen=True, slots=True, kw_only=True)
class GaussianMechanism:
    """Adds Gaussian noise of standard deviation ``scale`` to a statistic with L2 ``sensitivity``.

    Privacy:
        ``rho``-zCDP under add/remove-one-record, ``rho`` being OpenDP's privacy map of ``make_gaussian``
        at ``d_in = sensitivity`` (``sensitivity^2 / (2 scale^2)``, rounded up; integer-valued statistics
        use ``ceil(sensitivity)``); accounted as ``GaussianDpEvent(1 / sqrt(2 rho))`` and converted to
        (epsilon, delta) by the accountant.
    """

    sensitivity: float
    scale: float
    discrete: bool = False

    def __post_init__(self) -> None:
        if not self.sensitivity > 0:
            raise ValueError(f"`sensitivity` ({self.sensitivity}) must be > 0")
        if not self.scale > 0 or not np.isfinite(self.scale):
            raise ValueError(f"`scale` ({self.scale}) must be finite and > 0")

    @property
    def d_in(self) -> float:
        """The sensitivity in OpenDP's input metric (integer-valued statistics: rounded up)."""
        return float(math.ceil(self.sensitivity)) if self.discrete else float(self.sensitivity)

    @property
    def rho(self) -> float:
        """OpenDP's privacy map (zCDP) of the measurement that draws the noise, at ``d_in``."""
        return privacy_map("gaussian", scale=self.scale, d_in=self.d_in, discrete=self.discrete)

    @property
    def noise_multiplier(self) -> float:
        """The accounted noise multiplier: ``1 / sqrt(2 rho)``, rounded down (the event's rho >= ours)."""
        rho = self.rho
        return _rounded(1.0 / math.sqrt(2.0 * rho), down=True, ok=lambda m: 1.0 / (2.0 * m * m) >= rho)

    def event(self) -> dp_event.DpEvent:
        return dp_event.GaussianDpEvent(noise_multiplier=self.noise_multiplier)

    def release(self, values: np.ndarray, *, noise: NoiseSource) -> np.ndarray:
        return noise.gaussian(np.asarray(values), scale=self.scale, discrete=self.discrete)

    @classmethod
    def calibrate(
        cls,
        *,
        sensitivity: float,
        epsilon: float,
        delta: float,
        accountant: str = "rdp",
        discrete: bool = False,
    ) -> GaussianMechanism:
        """The least noise (to bisection tolerance, rounded up) whose accountant epsilon fits the target.

        The accountant sees the event derived from OpenDP's map, so the stated epsilon never exceeds the
        target even where the map rounds ``rho`` up.
        """
        from safesynth.privacy.accountant import calibrate_noise_multiplier, compose_epsilon

        multiplier = calibrate_noise_multiplier(
            lambda m: dp_event.GaussianDpEvent(noise_multiplier=m),
            epsilon=epsilon,
            delta=delta,
            accountant=accountant,
        )
        d_in = cls(sensitivity=sensitivity, scale=1.0, discrete=discrete).d_in

        def stated(scale: float) -> float:
            event = cls(sensitivity=sensitivity, scale=scale, discrete=discrete).event()
            return compose_epsilon([event], delta=delta, accountant=accountant)

        scale = least_scale(stated, start=multiplier * d_in, target=epsilon)
        return cls(sensitivity=sensitivity, scale=scale, discrete=discrete)


Mechanism = LaplaceMechanism | GaussianMechanism


def least_scale(cost: Callable[[float], float], *, start: float, target: float) -> float:
    """The least scale from ``start`` up whose ``cost`` (decreasing in the scale) is ``<= target``.

    ``start`` is a closed form that fits up to rounding; if it does not, the scale grows by relative
    steps of 1 ulp, 2 ulps, 4 ulps ... until it fits, then bisects between the last failure and the
    first fit and returns the fitting end (as Opacus calibrates: the safe side, never an overshoot).

    Raises:
        InternalError: nothing up to twice ``start`` fits (the cost is not what the closed form says).
    """
    if cost(start) <= target:
        return start
    lo, step = start, 2.0**-52
    hi = start * (1.0 + step)
    while cost(hi) > target:
        lo, step = hi, step * 2.0
        if step > 1.0:
            raise InternalError(f"no noise scale up to {2 * start!r} meets `epsilon` ({target!r})")
        hi = start * (1.0 + step)
    while True:
        mid = lo + (hi - lo) / 2.0
        if not lo < mid < hi:
            return hi
        if cost(mid) <= target:
            hi = mid
        else:
            lo = mid


def _rounded(value: float, *, down: bool, ok: Callable[[float], bool]) -> float:
    """``value`` moved by whole ulps (down or up) until ``ok`` holds: rounding that never understates."""
    for _ in range(64):
        if ok(value):
            return value
        value = math.nextafter(value, 0.0 if down else math.inf)
    raise InternalError("float rounding of a privacy parameter did not converge")


def make_mechanism(
    kind: str,
    *,
    l1_sensitivity: float,
    l2_sensitivity: float,
    epsilon: float,
    delta: float,
    accountant: str = "rdp",
    discrete: bool = False,
) -> Mechanism:
    """Calibrate the mechanism named in the spec (``laplace`` or ``gaussian``) to (epsilon, delta)."""
    if kind == "laplace":
        return LaplaceMechanism.calibrate(sensitivity=l1_sensitivity, epsilon=epsilon, discrete=discrete)
    if kind == "gaussian":
        if not delta > 0:
            raise ValueError(f"`delta` ({delta}) must be > 0 for the Gaussian mechanism")
        return GaussianMechanism.calibrate(
            sensitivity=l2_sensitivity, epsilon=epsilon, delta=delta, accountant=accountant, discrete=discrete
        )
    raise ValueError(f"`mechanism` ({kind!r}) must be 'laplace' or 'gaussian'")
