"""Gates: the decision whether a release may be published.

Fail closed: a missing or non-finite audit figure blocks. Each gate compares the attack's one-sided 95%
upper confidence bound (not the point estimate) with the spec's threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from safesynth.audit.attacks import AttackResult
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


def evaluate_gates(audit: AuditSpec, attack: AttackResult | None) -> GateDecision:
    """Decide from the attack results; ``attack=None`` (audit did not run) blocks."""
    gates = [_gate("membership-auc", attack.auc_upper if attack else None, audit.max_attack_auc,
                   "attack AUC (95% upper bound)")]
    if audit.max_tpr_at_low_fpr is not None:
        gates.append(_gate("membership-tpr", attack.tpr_upper if attack else None, audit.max_tpr_at_low_fpr,
                           f"attack TPR at FPR {audit.low_fpr:g} (95% upper bound)"))
    return GateDecision(passed=all(g.passed for g in gates), gates=tuple(gates))
