"""Split a release's (epsilon, delta) across the stages that read private data, before any data is read.

Each stage gets ``fraction x epsilon`` and ``fraction x delta`` and calibrates its own noise so that its
own bound fits that share; by basic composition the release then fits the spec's (epsilon, delta) even
before the accountant tightens it. Fractions never round a spend down: a stage gets exactly its share.
"""

from __future__ import annotations

from dataclasses import dataclass

from safesynth.spec import InContextGeneratorSpec, LLMGeneratorSpec, ReleaseSpec

__all__ = ["BudgetPlan", "StageBudget", "plan_budget"]

#: Default share of a release's budget for the noisy histogram an LLM conditions on.
DEFAULT_CONDITION_FRACTION = 0.1
#: Default share for the noisy count of repaired or dropped records (:mod:`safesynth.repair`).
DEFAULT_REPAIRS_FRACTION = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class StageBudget:
    name: str
    fraction: float
    epsilon: float
    delta: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetPlan:
    """The planned spend of one release, per stage."""

    epsilon: float
    delta: float
    accountant: str
    stages: tuple[StageBudget, ...]

    def stage(self, name: str) -> StageBudget:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in the budget plan (stages: {[s.name for s in self.stages]})")

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def to_dict(self) -> dict[str, object]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "stages": [{"name": s.name, "fraction": s.fraction, "epsilon": s.epsilon, "delta": s.delta}
                       for s in self.stages],
        }


def plan_budget(spec: ReleaseSpec) -> BudgetPlan:
    """Allocate the spec's budget to stages. Pure function of the spec: reads no data.

    Stages: ``discovery`` (only when a domain is undeclared), ``condition`` (the noisy histogram an llm or
    incontext generator conditions on, ``condition_on``), ``repairs`` (the noisy count of repaired or dropped
    records; by default ``DEFAULT_REPAIRS_FRACTION``, or what an explicit ``generator`` share leaves, at most that),
    ``generator`` (the rest), ``audit`` (the DP membership audit that gates publication,
    ``privacy.allocation.audit``, default 0.1, taken out of the generator's default share).
    """
    privacy = spec.privacy
    alloc = privacy.allocation
    fractions: dict[str, float] = {}
    if any(not col.bounded for col in spec.columns.values()):
        fractions["discovery"] = alloc.discovery
    gen = spec.generator
    if isinstance(gen, LLMGeneratorSpec | InContextGeneratorSpec) and gen.condition_on is not None:
        fractions["condition"] = alloc.condition if alloc.condition is not None else DEFAULT_CONDITION_FRACTION
    used = sum(fractions.values()) + alloc.audit
    if alloc.repairs is not None:
        fractions["repairs"] = alloc.repairs
    elif alloc.generator is None:
        fractions["repairs"] = DEFAULT_REPAIRS_FRACTION
    else:  # an explicit generator share: the count gets what is left over, never more than its default
        fractions["repairs"] = min(DEFAULT_REPAIRS_FRACTION, max(0.0, 1.0 - used - alloc.generator))
    used = sum(fractions.values()) + alloc.audit
    fractions["generator"] = alloc.generator if alloc.generator is not None else max(0.0, 1.0 - used)
    fractions["audit"] = alloc.audit
    if sum(fractions.values()) > 1.0 + 1e-12:
        from safesynth.errors import SpecError

        raise SpecError(f"`privacy.allocation` fractions sum to {sum(fractions.values()):.4g}; they must be <= 1")
    stages = tuple(
        StageBudget(name=name, fraction=f, epsilon=privacy.epsilon * f, delta=privacy.delta * f)
        for name, f in fractions.items()
        if f > 0
    )
    return BudgetPlan(epsilon=privacy.epsilon, delta=privacy.delta, accountant=privacy.accountant, stages=stages)
