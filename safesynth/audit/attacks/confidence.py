"""Success rates with Wilson-score errors and the residual risk over a control, after anonymeter.

A reimplementation of anonymeter's ``anonymeter/stats/confidence.py`` (statice/anonymeter, BSD 3-Clause
Clear; Giomi et al., "A Unified Framework for Quantifying Privacy Risk in Synthetic Data", PoPETs 2023):
anonymeter itself does not install beside our pins. As there, a rate is the Wilson score centre
``(k + z^2/2) / (n + z^2)`` with error ``z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)``, and the risk of
an attack with a control is ``(attack - control) / (1 - control)`` with the errors propagated to first
order. ``z`` is the two-sided normal quantile of ``confidence_level``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm

__all__ = ["EvaluationResult", "PrivacyRisk", "SuccessRate", "evaluation_result", "residual_success", "success_rate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyRisk:
    """A risk estimate with its confidence interval (clipped to [0, 1])."""

    value: float
    ci: tuple[float, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class SuccessRate:
    """A success rate (Wilson centre) and its error (half-width at the chosen confidence)."""

    value: float
    error: float

    def to_risk(self) -> PrivacyRisk:
        """The rate as a risk, with ``value -+ error`` clipped to [0, 1] as its interval."""
        return PrivacyRisk(value=self.value,
                           ci=(max(0.0, self.value - self.error), min(1.0, self.value + self.error)))


def success_rate(*, n_total: int, n_success: int, confidence_level: float = 0.95) -> SuccessRate:
    """Wilson-score estimate of a success probability from ``n_success`` of ``n_total`` trials.

    Raises:
        ValueError: ``n_total < 1``, ``n_success`` outside ``[0, n_total]`` or ``confidence_level``
            outside (0, 1).
    """
    if n_total < 1 or not 0 <= n_success <= n_total:
        raise ValueError(f"`n_success` ({n_success}) must be in [0, n_total] and `n_total` ({n_total}) >= 1")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"`confidence_level` ({confidence_level}) must be in (0, 1)")
    z = float(norm.ppf(0.5 + confidence_level / 2.0))
    z2 = z * z
    denominator = n_total + z2
    rate = (n_success + 0.5 * z2) / denominator
    error = z / denominator * math.sqrt(n_success * (n_total - n_success) / n_total + 0.25 * z2)
    return SuccessRate(value=rate, error=error)


def residual_success(*, attack_rate: SuccessRate, control_rate: SuccessRate) -> SuccessRate:
    """``(attack - control) / (1 - control)``: the success the attack owes to the members, not to chance.

    The error is propagated to first order, ``sqrt((dF/da)^2 e_a^2 + (dF/dc)^2 e_c^2)``, as anonymeter does.
    """
    denominator = 1.0 - control_rate.value  # > 0: a Wilson centre is below 1
    residual = (attack_rate.value - control_rate.value) / denominator
    d_attack = 1.0 / denominator
    d_control = (attack_rate.value - 1.0) / denominator**2
    error = math.hypot(attack_rate.error * d_attack, control_rate.error * d_control)
    return SuccessRate(value=residual, error=error)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationResult:
    """An anonymeter-style attack outcome: member, control and baseline success rates and the risk.

    ``attack_rate`` is the success on members (rows the generator was fitted on), ``control_rate`` the
    success of the same attack on non-members (the holdout), ``baseline_rate`` that of a naive guess.
    ``risk`` is :func:`residual_success` of attack over control (anonymeter's ``risk()``), as an interval.
    Exact figures on private rows: restricted zone only.
    """

    attack: str
    n_attacks: int
    n_control: int
    attack_rate: SuccessRate
    control_rate: SuccessRate
    baseline_rate: SuccessRate
    risk: PrivacyRisk


def evaluation_result(*, attack: str, n_attacks: int, n_success: int, n_control: int, n_control_success: int,
                      n_baseline_success: int, confidence_level: float = 0.95) -> EvaluationResult:
    """Rates and risk from success counts (anonymeter's ``EvaluationResults``)."""
    attack_rate = success_rate(n_total=n_attacks, n_success=n_success, confidence_level=confidence_level)
    control_rate = success_rate(n_total=n_control, n_success=n_control_success, confidence_level=confidence_level)
    baseline_rate = success_rate(n_total=n_attacks, n_success=n_baseline_success,
                                 confidence_level=confidence_level)
    residual = residual_success(attack_rate=attack_rate, control_rate=control_rate)
    return EvaluationResult(attack=attack, n_attacks=n_attacks, n_control=n_control, attack_rate=attack_rate,
                            control_rate=control_rate, baseline_rate=baseline_rate, risk=residual.to_risk())
