"""Gates: the decision whether a release may be published.

The decision is post-processing of the DP audit's published figures (:class:`~safesynth.audit.membership.
NoisyAudit`) and spec constants only, so whether a release appears is covered by the release's (epsilon,
delta). The gates are ``audit.effective_gates``:

* ``attack_auc`` (always present): the noisy maximum membership AUC over ``audit.attacks``, its one-sided
  95% upper bound (sampling error and DP noise) against the limit; beside it the *epsilon-consistency*
  check blocks when even the AUC's 95% lower bound beats ``e^eps / (1 + e^eps)`` for the synthetic rows'
  claimed epsilon, which no correct DP release allows (an implementation error);
* ``tvd_2way``: the noisy mean 2-way TVD's upper bound against a maximum;
* ``tstr_ratio``: the noisy TSTR / TRTR accuracy ratio's lower bound against a minimum.

Fail closed: a missing or NaN figure blocks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from safesynth.audit.membership import NoisyAudit
from safesynth.spec import AuditSpec

__all__ = ["GateDecision", "GateResult", "evaluate_gates"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult:
    gate: str
    passed: bool
    figure: float | None
    threshold: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GateDecision:
    passed: bool
    gates: tuple[GateResult, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> list[str]:
        return [g.reason for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "gates": [asdict(g) for g in self.gates]}


def _gate(name: str, figure: float | None, threshold: float, what: str, *, direction: str = "max") -> GateResult:
    if figure is None or math.isnan(figure):
        return GateResult(gate=name, passed=False, figure=None, threshold=threshold,
                          reason=f"{name}: {what} is missing; the gate fails closed")
    passed = figure <= threshold if direction == "max" else figure >= threshold
    verdict = ("<=" if passed else ">") if direction == "max" else (">=" if passed else "<")
    return GateResult(gate=name, passed=passed, figure=figure, threshold=threshold,
                      reason=f"{name}: {what} {figure:.3f} {verdict} threshold {threshold:.3f}")


def _epsilon_check(result: NoisyAudit) -> GateResult:
    """Block when even the AUC's lower bound beats what the claimed epsilon allows: a bug, not an attack."""
    what = "DP attack AUC (95% lower bound, Bonferroni over the attacks) against the claimed epsilon's AUC bound"
    if result.noisy_auc is None:
        return GateResult(gate="epsilon-consistency", passed=True, figure=None, threshold=result.auc_bound,
                          reason="epsilon-consistency: no AUC was released (nothing to check)")
    passed = result.auc_lower <= result.auc_bound
    verdict = "<=" if passed else "> (an implementation error: the attack beats the claimed epsilon)"
    return GateResult(gate="epsilon-consistency", passed=passed, figure=result.auc_lower, threshold=result.auc_bound,
                      reason=f"epsilon-consistency: {what} {result.auc_lower:.3f} {verdict} {result.auc_bound:.3f}")


def _canary_check(result: NoisyAudit) -> GateResult:
    """Block when the canaries' empirical lower bound on epsilon exceeds the claim (a privacy bug)."""
    claimed = result.claimed_epsilon if result.claimed_epsilon is not None else math.inf
    empirical = float(result.empirical_epsilon) if result.empirical_epsilon is not None else math.nan
    if math.isnan(empirical):
        return GateResult(gate="canary-epsilon", passed=False, figure=None, threshold=claimed,
                          reason="canary-epsilon: the canary audit is missing; the gate fails closed")
    passed = empirical <= claimed
    verdict = "<=" if passed else "> (the release leaks more than it claims)"
    return GateResult(gate="canary-epsilon", passed=passed, figure=empirical, threshold=claimed,
                      reason=f"canary-epsilon: empirical lower bound on epsilon {empirical:.3f} {verdict} claimed "
                             f"{claimed:.3f}")


def evaluate_gates(audit: AuditSpec, result: NoisyAudit | None) -> GateDecision:
    """Decide from the DP audit's figures and the spec's gates; ``result=None`` (no audit) blocks."""
    gates: list[GateResult] = []
    for spec in audit.effective_gates:
        if spec.figure == "attack_auc":
            threshold = float(spec.max if spec.max is not None else audit.max_attack_auc)
            what = "DP max attack AUC (95% upper bound)"
            if result is not None and result.noisy_auc is None:
                what = "DP attack AUC (no rows per side after the DP count: vacuous bound)"
            gates.append(_gate("membership-auc", result.auc_upper if result else None, threshold, what))
            if result is not None:
                gates.append(_epsilon_check(result))
                if result.empirical_epsilon is not None:
                    gates.append(_canary_check(result))
            continue
        figure = result.figure(spec.figure) if result is not None else None
        if spec.figure == "tvd_2way":
            gates.append(_gate("tvd-2way", figure.upper if figure else None, float(spec.max or 0.0),
                               "DP mean 2-way TVD (95% upper bound)"))
        else:
            gates.append(_gate("tstr-ratio", figure.lower if figure else None, float(spec.min or 0.0),
                               "DP TSTR / TRTR accuracy (95% lower bound)", direction="min"))
    return GateDecision(passed=all(g.passed for g in gates), gates=tuple(gates))
