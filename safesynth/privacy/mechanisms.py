"""Laplace and Gaussian mechanisms that state their privacy cost before touching data.

The neighbouring relation everywhere is add/remove one record (unbounded DP), the relation under which
Poisson-subsampled DP-SGD is analysed, so all stages compose in one accountant.

Each mechanism is a frozen value: ``LaplaceMechanism(sensitivity=1, scale=2.0).event()`` is its
`dp_accounting` event (no data needed); ``.release(values, noise=...)`` adds the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event

from safesynth.privacy.noise import NoiseSource

__all__ = ["GaussianMechanism", "LaplaceMechanism", "Mechanism", "make_mechanism"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LaplaceMechanism:
    """Adds Laplace noise of ``scale`` to a statistic with L1 ``sensitivity``.

    Privacy:
        ``epsilon = sensitivity / scale`` pure DP under add/remove-one-record, provided the statistic's
        L1 sensitivity really is ``sensitivity``. Accounted as ``LaplaceDpEvent(scale / sensitivity)``.
        The discrete variant has the same epsilon but a worse privacy-loss distribution (+-epsilon, as
        randomized response, not spread over [-epsilon, epsilon]), so it is accounted as
        ``DiscreteLaplaceDpEvent(1 / scale, ceil(sensitivity))``, never as the continuous event.
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
    def epsilon(self) -> float:
        return self.sensitivity / self.scale

    @property
    def delta(self) -> float:
        return 0.0

    @property
    def noise_multiplier(self) -> float:
        return self.scale / self.sensitivity

    def event(self) -> dp_event.DpEvent:
        if self.discrete:
            # Integer-valued statistics have integer sensitivity; ceil only ever overstates the cost.
            return dp_event.DiscreteLaplaceDpEvent(1.0 / self.scale, math.ceil(self.sensitivity))
        return dp_event.LaplaceDpEvent(noise_multiplier=self.noise_multiplier)

    def release(self, values: np.ndarray, *, noise: NoiseSource) -> np.ndarray:
        return noise.laplace(np.asarray(values), scale=self.scale, discrete=self.discrete)

    @classmethod
    def calibrate(cls, *, sensitivity: float, epsilon: float, discrete: bool = False) -> LaplaceMechanism:
        """The least noise with ``epsilon`` at most the target (closed form)."""
        if not epsilon > 0:
            raise ValueError(f"`epsilon` ({epsilon}) must be > 0")
        return cls(sensitivity=sensitivity, scale=sensitivity / epsilon, discrete=discrete)


@dataclass(frozen=True, slots=True, kw_only=True)
class GaussianMechanism:
    """Adds Gaussian noise of standard deviation ``scale`` to a statistic with L2 ``sensitivity``.

    Privacy:
        rho-zCDP with ``rho = sensitivity^2 / (2 scale^2)`` under add/remove-one-record; accounted as
        ``GaussianDpEvent(scale / sensitivity)`` and converted to (epsilon, delta) by the accountant.
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
    def noise_multiplier(self) -> float:
        return self.scale / self.sensitivity

    @property
    def rho(self) -> float:
        return self.sensitivity**2 / (2.0 * self.scale**2)

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
        """The least noise (to bisection tolerance, rounded up) whose accountant epsilon fits the target."""
        from safesynth.privacy.accountant import calibrate_noise_multiplier

        multiplier = calibrate_noise_multiplier(
            lambda m: dp_event.GaussianDpEvent(noise_multiplier=m),
            epsilon=epsilon,
            delta=delta,
            accountant=accountant,
        )
        return cls(sensitivity=sensitivity, scale=multiplier * sensitivity, discrete=discrete)


Mechanism = LaplaceMechanism | GaussianMechanism


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
