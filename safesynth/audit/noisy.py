"""Laplace releases of audit statistics, each spend recorded before the data is touched.

:func:`calibrated_laplace` finds the least scale whose stated epsilon fits; :func:`release_statistic`
records a stage's spend in the release account and adds the noise (OpenDP's, through
:class:`~safesynth.privacy.noise.NoiseSource`). :class:`NoisyFigure` is one published figure with bounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from safesynth.errors import InternalError
from safesynth.privacy.accountant import ReleaseAccount, StageSpend
from safesynth.privacy.mechanisms import LaplaceMechanism
from safesynth.privacy.noise import NoiseSource

__all__ = ["NoisyFigure", "calibrated_laplace", "release_statistic"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NoisyFigure:
    """One published utility figure: a noisy statistic and its one-sided 95% bounds (DP outputs)."""

    figure: str
    value: float | None
    lower: float
    upper: float
    epsilon: float
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrated_laplace(*, sensitivity: float, epsilon: float) -> LaplaceMechanism:
    """The Laplace mechanism with the least scale whose stated epsilon is at most ``epsilon`` (never above).

    Raises:
        InternalError: no scale within a few ulps of ``sensitivity / epsilon`` fits (a bug).
    """
    if not epsilon > 0:
        raise ValueError(f"`epsilon` ({epsilon}) must be > 0")
    scale = sensitivity / epsilon
    for _ in range(64):
        mechanism = LaplaceMechanism(sensitivity=sensitivity, scale=scale)
        if mechanism.epsilon <= epsilon:
            return mechanism
        scale = math.nextafter(scale, math.inf)  # round the noise up, never the spend down
    raise InternalError(f"no Laplace scale near {sensitivity / epsilon:.6g} meets `epsilon` ({epsilon})")


def release_statistic(value: float, *, stage: str, sensitivity: float, epsilon: float, noise: NoiseSource,
             account: ReleaseAccount, statistic: str) -> tuple[float, float]:
    """``value`` plus calibrated Laplace noise, its spend recorded first; returns ``(noisy, scale)``."""
    mechanism = calibrated_laplace(sensitivity=sensitivity, epsilon=epsilon)
    account.add(StageSpend(stage=stage, event=mechanism.event(), epsilon=mechanism.epsilon, delta=0.0,
                           mechanism="laplace", secure_noise=bool(noise.secure),
                           detail={"statistic": statistic, "sensitivity": sensitivity, "scale": mechanism.scale}))
    return float(mechanism.release(np.array([float(value)]), noise=noise)[0]), mechanism.scale
