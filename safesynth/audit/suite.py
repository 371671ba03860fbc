"""The full audit suite on private rows: every attack with a real reference, the risks, the utility report.

This is the data owner's view (restricted zone): exact figures, not differentially private, written to
the attempt's restricted reports directory by the release and printed by ``safesynth audit``. It never
decides publication; the published gates read the DP figures of :mod:`safesynth.audit.membership`.

Roles (Synth-MIA's and anonymeter's setting): members are rows the generator was fitted on; the holdout
is split by secret randomness into the attacker's *reference* rows (``reference_fraction`` of it) and the
*non-members*; members and non-members are attacked in equal samples of at most ``max_rows`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from safesynth.audit.attacks import (
    EvaluationResult,
    TextCopyResult,
    attribute_inference,
    create_attack,
    linkability,
    singling_out,
    text_copy,
)
from safesynth.audit.report import AuditReport, build_report
from safesynth.spec import BooleanColumn, CategoricalColumn, DatetimeColumn, ReleaseSpec, TextColumn

__all__ = ["SuiteResult", "positive_class", "run_suite"]

@dataclass(frozen=True, slots=True, kw_only=True)
class SuiteResult:
    """The report and what could not be measured (an attack or risk that raised: its exception class)."""

    report: AuditReport
    failed: dict[str, str] = field(default_factory=dict)


def positive_class(spec: ReleaseSpec, target: str) -> object:
    """The class TSTR's ROC AUC treats as positive: ``True``, or the last declared category."""
    col = spec.columns[target]
    if isinstance(col, BooleanColumn):
        return True
    if isinstance(col, CategoricalColumn) and col.categories:
        return col.categories[-1]
    raise ValueError(f"`audit.target_column` ({target}) must be a boolean or declared categorical column")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sides:
    """The frames every risk evaluator attacks, and the secret randomness they share."""

    synthetic: pd.DataFrame
    members: pd.DataFrame
    non_members: pd.DataFrame
    spec: ReleaseSpec
    rng: np.random.Generator

    def inference(self, secret: str) -> EvaluationResult:
        return attribute_inference(synthetic=self.synthetic, members=self.members, non_members=self.non_members,
                                   secret=secret, spec=self.spec, rng=self.rng)

    def singling_out(self) -> EvaluationResult:
        return singling_out(synthetic=self.synthetic, members=self.members, non_members=self.non_members,
                            spec=self.spec, rng=self.rng)

    def linkability(self, halves: tuple[list[str], list[str]]) -> EvaluationResult:
        return linkability(synthetic=self.synthetic, members=self.members, non_members=self.non_members,
                           aux_columns=halves, spec=self.spec, rng=self.rng)

    def text_copy(self, column: str) -> TextCopyResult:
        return text_copy(synthetic=self.synthetic, members=self.members, non_members=self.non_members,
                         column=column, spec=self.spec, rng=self.rng)


def _sample(frame: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    return frame.iloc[np.sort(rng.choice(len(frame), rows, replace=False))].reset_index(drop=True)


def _link_halves(spec: ReleaseSpec) -> tuple[list[str], list[str]] | None:
    names = [n for n, c in spec.columns.items() if not isinstance(c, TextColumn | DatetimeColumn)]
    if len(names) < 2:
        return None
    half = len(names) // 2
    return names[:half], names[half:]


def run_suite(
    *,
    spec: ReleaseSpec,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
    reference_fraction: float = 0.5,
    max_rows: int | None = None,
    attacks: Sequence[str] | None = None,
    empirical_epsilon: float | None = None,
) -> SuiteResult:
    """Run every attack, risk and utility measure; return the owner's report.

    Args:
        spec: the resolved spec (declared domains, ``audit`` settings).
        train: the rows the generator was fitted on (members).
        holdout: rows it never saw: the reference rows and the non-members are split from it.
        synthetic: the released rows.
        epsilon: the claimed epsilon of the synthetic rows (the AUC bound of the report).
        delta: its delta.
        rng: secret randomness (the splits and samples touch records); never the spec's seed.
        reference_fraction: share of the holdout given to the attacker as reference rows.
        max_rows: members and non-members attacked per side (default ``audit.max_audit_rows``).
        attacks: membership attacks to run (default ``audit.attacks``).
        empirical_epsilon: a canary audit's lower bound, shown next to ``epsilon``.

    Privacy:
        Not DP: every figure is exact. Restricted zone only (the report shows figures, never records).
    """
    rows = spec.audit.max_audit_rows if max_rows is None else max_rows
    order = rng.permutation(len(holdout))
    cut = int(round(reference_fraction * len(holdout)))
    reference = holdout.iloc[order[:cut]].reset_index(drop=True)
    non_members = holdout.iloc[order[cut:]].reset_index(drop=True)
    per_side = min(rows, len(train), len(non_members))
    members = _sample(train, per_side, rng)
    non_members = _sample(non_members, per_side, rng)
    failed: dict[str, str] = {}
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if per_side > 0 and len(synthetic) and len(reference):
        targets = pd.concat([members, non_members], ignore_index=True)
        for name in attacks if attacks is not None else spec.audit.attacks:
            try:
                s = np.asarray(create_attack(name).scores(synthetic=synthetic, reference=reference, targets=targets,
                                                          spec=spec), dtype=float)
                scores[name] = (s[:per_side], s[per_side:])
            except Exception as exc:  # noqa: BLE001 - the report says what it could not measure
                failed[name] = exc.__class__.__name__
    risks: list[EvaluationResult] = []
    copies: list[TextCopyResult] = []
    if per_side > 0 and len(synthetic):
        sides = Sides(synthetic=synthetic, members=members, non_members=non_members, spec=spec, rng=rng)
        jobs: list[tuple[str, Callable[[], EvaluationResult]]] = [
            (f"inference:{c}", partial(sides.inference, c)) for c in spec.audit.sensitive_columns]
        jobs.append(("singling-out", sides.singling_out))
        halves = _link_halves(spec)
        if halves is not None:
            jobs.append(("linkability", partial(sides.linkability, halves)))
        for name, job in jobs:
            try:
                risks.append(job())
            except Exception as exc:  # noqa: BLE001 - the report says what it could not measure
                failed[name] = exc.__class__.__name__
        for name, col in spec.columns.items():
            if isinstance(col, TextColumn):
                try:
                    copies.append(sides.text_copy(name))
                except Exception as exc:  # noqa: BLE001
                    failed[f"text-copy:{name}"] = exc.__class__.__name__
    target = spec.audit.target_column
    report = build_report(
        spec=spec, train=members, holdout=non_members, synthetic=synthetic, epsilon=epsilon, delta=delta, rng=rng,
        attack_scores=scores, risks=risks, text_copies=copies, target=target,
        positive=None if target is None else positive_class(spec, target),
        empirical_epsilon=empirical_epsilon)
    return SuiteResult(report=report, failed=failed)
