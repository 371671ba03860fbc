"""Gates: the decision whether a release may be published.

The decision is post-processing of the DP audit's published figures (:class:`~safesynth.audit.membership.
NoisyAudit`) and spec constants only, so whether a release appears is covered by the release's (epsilon,
delta). The gate compares the noisy AUC's one-sided 95% upper bound (sampling error and DP noise) with
``audit.max_attack_auc``. Fail closed: a missing or non-finite figure blocks.
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


def _gate(name: str, figure: float | None, threshold: float, what: str) -> GateResult:
    if figure is None or not math.isfinite(figure):
        return GateResult(gate=name, passed=False, figure=None, threshold=threshold,
                          reason=f"{name}: {what} is missing; the gate fails closed")
    passed = figure <= threshold
    verdict = "<=" if passed else ">"
    return GateResult(gate=name, passed=passed, figure=figure, threshold=threshold,
                      reason=f"{name}: {what} {figure:.3f} {verdict} threshold {threshold:.3f}")


def evaluate_gates(audit: AuditSpec, result: NoisyAudit | None) -> GateDecision:
    """Decide from the DP audit's figures; ``result=None`` (the audit did not run) blocks."""
    what = "DP attack AUC (95% upper bound)"
    if result is not None and result.noisy_auc is None:
        what = "DP attack AUC (no rows per side after the DP count: vacuous bound)"
    gates = [_gate("membership-auc", result.auc_upper if result else None, audit.max_attack_auc, what)]
    return GateDecision(passed=all(g.passed for g in gates), gates=tuple(gates))
