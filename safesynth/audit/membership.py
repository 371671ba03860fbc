"""The audit that decides publication, as a differentially private mechanism.

Members are the rows the generator was fitted on (train); non-members are the secret holdout, which the
generator never saw. Each attack in ``audit.attacks`` (the registry of :mod:`safesynth.audit.attacks`:
distance to closest record, DOMIAS, Gen-LRA, the classifier attack) scores every record by a function of
that record, the synthetic rows, the spec and a **public reference** (rows drawn from the declared domains,
:mod:`safesynth.audit.reference`; a private reference would let one reference row move every score). The
statistic is the **maximum over the attacks** of the Mann-Whitney AUC of member against non-member scores
(Synth-MIA's "maximum over a suite"). One slot moves each attack's AUC, and so their maximum, by at most
``1 / k``. An attack that raises counts as AUC 1 (fail closed); the argument assumes that whether an
attack raises depends on the synthetic rows, the reference and the spec, not on one target (attacks see
validated rows through declared-domain features; a NaN score is one slot's win, see :func:`slot_auc`). The strongest attacks with a real
reference, the risks and the utility report run in :mod:`safesynth.audit.suite`, restricted.

When the spec gates on utility, the same ``k`` non-member slots also give ``audit.tvd_2way`` (the mean
2-way TVD to the synthetic rows, sensitivity ``1 / k``) and ``audit.tstr`` / ``audit.trtr`` (mean accuracy
of classifiers fitted on ``m`` parts of the synthetic rows / of the fitted rows, sensitivities ``1 / k`` and
``max(1 / m, 1 / k)``; :mod:`safesynth.audit.dp_utility`). Each gets an equal share of the audit's epsilon
after the count; all share one coupling of the slots, so the proof below composes their epsilons.

The mechanism (:func:`audit_membership`), charged to the plan's ``audit`` stage:

1. ``audit.count``: ``n = min(|train|, |holdout|)`` plus Laplace noise of scale ``b_n = 1 / epsilon_count``.
2. ``k = min(max_audit_rows, floor(noisy_n - margin))`` rows per side, ``margin = b_n ln(1 / (2 beta))``, so
   that ``P(k > n) <= beta`` (:data:`SHORTFALL_PROBABILITY`). ``k`` is published; it is a DP output.
3. ``k`` slots per side: a uniform sample without replacement of ``min(k, n_side)`` rows, drawn with secret
   randomness (never the spec's seed). A side with fewer than ``k`` rows fills its other slots with
   *dummies that count as the attack's wins* (a member dummy outranks every non-member, a non-member dummy
   is outranked by every member): a shortfall can only raise the AUC, so it fails closed, and the run
   never fails on it.
4. ``audit.auc``: ``noisy_auc = max over attacks of AUC + Laplace(1 / (k epsilon_auc))``.
5. The gate compares a one-sided 95% upper bound, ``noisy_auc + z sqrt(var_HM(noisy_auc, k, k) + 2 b^2)``
   (Hanley & McNeil's sampling variance plus the Laplace noise's ``2 b^2``), with ``max_attack_auc``. It is
   post-processing of ``(noisy_auc, k)`` and spec constants. When ``k < 1`` no AUC is released and the
   bound is the vacuous 1.

Privacy proof sketch (add/remove one record ``x``; ``epsilon_count + epsilon_auc <= epsilon``, delta 0):

* Every record's side is its own secret coin, independent of the others (:func:`safesynth.stages.split`),
  so condition on the other records' coins and on ``x``'s: exactly one side gains or loses ``x`` (the
  output law with ``x`` is a mixture over ``x``'s coin of two laws, each within the bound of the law
  without ``x``, so the mixture is too). The synthetic rows ``S`` are the output of the generator's own
  accounted mechanism; given ``S`` the scoring function is fixed (adaptive sequential composition).
* ``min(|train|, |holdout|)`` moves by at most 1: step 1 is ``epsilon_count``-DP; ``k`` is post-processing.
* Fix ``k``. Couple the side that differs, with ``m`` and ``m + 1`` rows: draw the ``m + 1`` side's slots;
  if ``x`` is among them, replace it by a uniformly chosen unsampled row of the ``m`` side, or by a dummy
  when that side has fewer than ``k`` rows. Each marginal is the right law (uniform subsets, by symmetry) and the
  coupled slot vectors differ in at most one slot. The AUC is the mean of ``k^2`` pair terms in ``[0, 1]``
  and one slot enters ``k`` of them, so it moves by at most ``1/k`` on every coupled pair. Laplace noise
  of scale ``1 / (k epsilon_auc)`` makes each pair's outputs ``epsilon_auc``-close, and a mixture over a
  coupling keeps the bound.
  The maximum over attacks moves by at most the largest of their moves. The utility statistics on the
  same coupled slots move by at most their stated sensitivities; a record on the fitted side is in one
  of the ``m`` parts by its own secret draw, so it moves one part's accuracy (``1 / m`` of the mean).
* Composition: ``epsilon_count`` plus the shares, pure. Because of the dummies there is no bad event (no
  delta) and no data-dependent failure. Whether a release appears is post-processing.

The noise is OpenDP's (exact, CSPRNG) through :class:`~safesynth.privacy.noise.NoiseSource`; every
mechanism states its ``dp_accounting`` event before it touches data. The exact figures (exact AUC, its
interval, TPR at low FPR, exact sizes) go to :class:`AuditDiagnostics`, for the restricted zone only.
TPR at a low FPR has no small sensitivity (one non-member moves the threshold that every member is
compared with), so it never gates a release.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from safesynth.audit.attacks import (
    AttackResult,
    attack_figures,
    auc_upper_bound,
    create_attack,
    hanley_mcneil_variance,
)
from safesynth.audit.dp_utility import RATIO_CAP, tstr_figure, tvd_figure
from safesynth.audit.noisy import NoisyFigure, calibrated_laplace
from safesynth.audit.reference import domain_sample
from safesynth.audit.stats import auc_bound_for_epsilon
from safesynth.errors import InternalError
from safesynth.privacy.accountant import ReleaseAccount, StageSpend
from safesynth.privacy.noise import NoiseSource
from safesynth.spec import ReleaseSpec

__all__ = [
    "COUNT_SHARE",
    "SHORTFALL_PROBABILITY",
    "AuditDiagnostics",
    "NoisyAudit",
    "NoisyFigure",
    "audit_membership",
    "calibrated_laplace",
    "release_auc",
    "rows_per_side",
    "slot_auc",
    "split_epsilon",
]

#: Share of the audit stage's epsilon spent on the count that sets ``k``; the AUC gets the rest.
COUNT_SHARE = 0.25
#: Probability that ``k`` exceeds the smaller side (then dummies fill the missing slots, failing closed).
SHORTFALL_PROBABILITY = 1e-3
#: Public reference rows (from the declared domains) the attacks of the published gate compare with.
REFERENCE_ROWS = 10_000

log = logging.getLogger("safesynth")


@dataclass(frozen=True, slots=True, kw_only=True)
class NoisyAudit:
    """The audit's published figures: DP outputs and spec constants only.

    ``rows_per_side`` (``k``) comes from a noisy count; ``noisy_auc`` (the maximum over ``attacks``) is None
    when ``k < 1``, and then ``auc_upper`` is the vacuous 1. ``auc_lower`` is a one-sided 95% lower bound
    (Bonferroni over the attacks) that the gate compares with ``auc_bound``, the largest AUC the claimed
    ``(epsilon, delta)`` of the synthetic rows allows. ``utility`` holds the gated utility figures;
    ``empirical_epsilon`` the canary audit's lower bound on epsilon (canary mode; post-processing of the
    synthetic rows and of secret canaries independent of the data).
    """

    attack: str
    rows_per_side: int
    noisy_auc: float | None
    auc_upper: float
    epsilon: float
    auc_noise_scale: float | None
    count_noise_scale: float
    shortfall_probability: float
    attacks: tuple[str, ...] = ()
    auc_lower: float = 0.0
    auc_bound: float = 1.0
    claimed_epsilon: float | None = None
    utility: tuple[NoisyFigure, ...] = ()
    empirical_epsilon: float | None = None

    def figure(self, name: str) -> NoisyFigure | None:
        """The utility figure ``name`` (``tvd_2way``, ``tstr_ratio``), if it was computed."""
        return next((f for f in self.utility if f.figure == name), None)

    def to_dict(self) -> dict[str, Any]:
        empirical = self.empirical_epsilon
        return {**asdict(self), "attacks": list(self.attacks), "utility": [f.to_dict() for f in self.utility],
                "empirical_epsilon": None if empirical is None or math.isnan(empirical) else empirical,
                "differentially_private": True, "neighbouring": "add/remove one record",
                "note": "noisy figures from an accounted mechanism (stages audit.*); the attacks' reference "
                        "rows are drawn from the declared domains; exact figures stay in the restricted reports"}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditDiagnostics:
    """Exact figures on private rows, for the restricted reports directory only.

    ``exact`` is the strongest attack on the sampled real rows (exact AUC, its interval, TPR at low FPR,
    sizes); ``slot_auc`` is the exact statistic that was noised (dummies included); ``attack_aucs`` each
    gated attack's slot AUC (a failed attack counts 1); ``utility`` the exact utility statistics.
    """

    exact: AttackResult | None
    slot_auc: float | None
    train_rows: int
    holdout_rows: int
    noisy_count: float
    padded_members: int
    padded_non_members: int
    attack_aucs: dict[str, float] = field(default_factory=dict)
    failed_attacks: dict[str, str] = field(default_factory=dict)
    utility: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "exact"},
                "exact": self.exact.to_dict() if self.exact else None,
                "differentially_private": False, "zone": "restricted"}


def split_epsilon(epsilon: float) -> tuple[float, float]:
    """``(epsilon_count, epsilon_auc)``: :data:`COUNT_SHARE` and the rest, never summing above ``epsilon``."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"`epsilon` ({epsilon}) must be finite and > 0")
    epsilon_count = epsilon * COUNT_SHARE
    epsilon_auc = epsilon - epsilon_count
    while math.fsum([epsilon_count, epsilon_auc]) > epsilon:
        epsilon_auc = math.nextafter(epsilon_auc, 0.0)
    return epsilon_count, epsilon_auc


def rows_per_side(n_members: int, n_non_members: int, *, epsilon: float, max_rows: int, noise: NoiseSource,
                  account: ReleaseAccount) -> tuple[int, float]:
    """``k``, the number of slots per side, from a noisy count; returns ``(k, noisy_count)``.

    Privacy:
        ``epsilon``-DP under add/remove one record: ``min(n_members, n_non_members)`` has sensitivity 1
        (a record is on one side), Laplace noise of scale ``1 / epsilon``. ``k`` is post-processing; with
        probability at most :data:`SHORTFALL_PROBABILITY` it exceeds the smaller side. The noisy count is
        for the restricted zone; ``k`` may be published. Recorded as stage ``audit.count``.
    """
    mechanism = calibrated_laplace(sensitivity=1.0, epsilon=epsilon)
    margin = mechanism.scale * math.log(1.0 / (2.0 * SHORTFALL_PROBABILITY))
    account.add(StageSpend(stage="audit.count", event=mechanism.event(), epsilon=mechanism.epsilon, delta=0.0,
                           mechanism="laplace", secure_noise=bool(noise.secure),
                           detail={"statistic": "min(train rows, holdout rows)", "sensitivity": 1.0,
                                   "scale": mechanism.scale, "margin": margin,
                                   "purpose": "sets the audit's rows per side"}))  # before the data is touched
    noisy = float(mechanism.release(np.array([float(min(n_members, n_non_members))]), noise=noise)[0])
    k = int(min(float(max_rows), max(0.0, math.floor(noisy - margin))))
    return k, noisy


def slot_auc(member_scores: np.ndarray, non_member_scores: np.ndarray, *, rows_per_side: int) -> float:
    """Mann-Whitney AUC over ``rows_per_side`` slots per side (ties count 1/2).

    Missing slots (a side with fewer scores) and NaN scores are the attack's wins: a member slot at
    ``+inf``, a non-member slot at ``-inf``. One slot moves the result by at most ``1 / rows_per_side``.

    Raises:
        ValueError: ``rows_per_side < 1``, or more scores than slots.
    """
    k = rows_per_side
    if k < 1 or len(member_scores) > k or len(non_member_scores) > k:
        raise ValueError(f"`rows_per_side` ({k}) must be >= 1 and hold every score "
                         f"({len(member_scores)} members, {len(non_member_scores)} non-members)")
    members = np.full(k, np.inf)
    members[: len(member_scores)] = np.where(np.isnan(member_scores), np.inf, member_scores)
    non_members = np.full(k, -np.inf)
    non_members[: len(non_member_scores)] = np.where(np.isnan(non_member_scores), -np.inf, non_member_scores)
    ranks = rankdata(np.concatenate([members, non_members]))  # average ranks: ties count 1/2
    # Rank sums of up to 2k = 1e4 slots are exact in float64 (multiples of 1/2 below 2^52).
    return float((math.fsum(ranks[:k]) - k * (k + 1) / 2.0) / (k * k))


def release_auc(auc: float, *, rows_per_side: int, epsilon: float, noise: NoiseSource,
                account: ReleaseAccount) -> tuple[float, float]:
    """``auc`` plus Laplace noise; returns ``(noisy_auc, scale)``.

    Privacy:
        ``epsilon``-DP under add/remove one record, given ``rows_per_side`` (a DP output) and the synthetic
        rows (already DP): the slot AUC has sensitivity ``1 / rows_per_side`` under the coupling in the
        module docstring; Laplace scale ``1 / (rows_per_side epsilon)``. Recorded as stage ``audit.auc``.
    """
    mechanism = calibrated_laplace(sensitivity=1.0 / rows_per_side, epsilon=epsilon)
    account.add(StageSpend(stage="audit.auc", event=mechanism.event(), epsilon=mechanism.epsilon, delta=0.0,
                           mechanism="laplace", secure_noise=bool(noise.secure),
                           detail={"statistic": "Mann-Whitney AUC over k slots per side",
                                   "rows_per_side": rows_per_side, "sensitivity": 1.0 / rows_per_side,
                                   "scale": mechanism.scale}))  # before the data is touched
    noisy = float(mechanism.release(np.array([float(auc)]), noise=noise)[0])
    return noisy, mechanism.scale


def _slots(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Row positions for ``k`` slots: a uniform subset without replacement (all rows when ``n <= k``)."""
    return rng.permutation(n) if n <= k else rng.choice(n, k, replace=False)


def _shares(epsilon: float, parts: int) -> list[float]:
    """``parts`` equal shares of ``epsilon`` whose exact sum never exceeds it."""
    share = epsilon / parts
    while math.fsum([share] * parts) > epsilon:
        share = math.nextafter(share, 0.0)
    return [share] * parts


def _attack_scores(name: str, synthetic: pd.DataFrame, reference: pd.DataFrame, targets: pd.DataFrame,
                   spec: ReleaseSpec) -> tuple[np.ndarray, str | None]:
    """One attack's scores of ``targets``; a failure gives NaN scores (the attack's wins) and its reason."""
    try:
        scores = np.asarray(create_attack(name).scores(synthetic=synthetic, reference=reference, targets=targets,
                                                       spec=spec), dtype=float)
        if scores.shape != (len(targets),):
            raise InternalError(f"attack `{name}` returned {scores.shape} scores for {len(targets)} targets")
        return scores, None
    except Exception as exc:  # noqa: BLE001 - fail closed: a failed attack counts as a perfect one
        log.warning("membership attack %s failed (%s); it counts as AUC 1 and blocks the release", name,
                    exc.__class__.__name__)
        return np.full(len(targets), np.nan), exc.__class__.__name__


def _lower_bound(value: float, sd: float, tests: int, *, laplace_scale: float) -> float:
    """One-sided 95 % lower bound (Bonferroni over ``tests``): half the error rate for the AUC's sampling
    error (normal, ``sd``), half for the Laplace noise, whose tail ``P(L > t) = exp(-t / b) / 2`` is heavier
    than a normal's of the same variance (a normal quantile let the noise alone push the bound past 1)."""
    alpha = 0.05 / tests
    noise_part = laplace_scale * math.log(1.0 / alpha) if laplace_scale > 0 else 0.0  # P(L > t) = alpha / 2
    return value - float(norm.ppf(1.0 - alpha / 2)) * sd - noise_part


def audit_membership(
    synthetic: pd.DataFrame,
    members: pd.DataFrame,
    non_members: pd.DataFrame,
    *,
    spec: ReleaseSpec,
    epsilon: float,
    account: ReleaseAccount,
    noise: NoiseSource,
    sampler: np.random.Generator | None = None,
    claimed_epsilon: float | None = None,
    claimed_delta: float = 0.0,
) -> tuple[NoisyAudit, AuditDiagnostics]:
    """The DP audit: published figures and exact diagnostics.

    Args:
        synthetic: the synthetic rows (the output of the generator's DP mechanism).
        members: the rows the generator was fitted on.
        non_members: the secret holdout.
        spec: the resolved spec (declared domains for the features; ``audit`` settings).
        epsilon: the plan's ``audit`` stage epsilon.
        account: the release account; the spends are added to it before each noisy step.
        noise: the privacy noise source (OpenDP's in releases).
        sampler: secret randomness for choosing the slots and the parts; default: seeded from the OS
            CSPRNG. Tests inject a seeded one; never the spec's public seed.
        claimed_epsilon: the epsilon the synthetic rows were released under (the AUC bound the gate checks
            against); default: the account's epsilon before the audit.
        claimed_delta: its delta.

    Privacy:
        Spends at most ``epsilon`` (pure, delta 0) under add/remove one record of the input table, each
        record having been put in ``members`` or ``non_members`` by its own secret coin: ``audit.count``
        (``COUNT_SHARE`` of it, sensitivity 1), then equal shares of the rest for ``audit.auc`` (sensitivity
        ``1 / k``) and, when the spec gates on them, ``audit.tvd_2way`` (``1 / k``), ``audit.tstr`` (``1 / k``)
        and ``audit.trtr`` (``max(1 / m, 1 / k)``). See the module docstring for the proof sketch. The
        returned :class:`AuditDiagnostics` is not DP and must stay in the restricted zone.
    """
    if claimed_epsilon is None:
        claimed_epsilon = account.epsilon if account.spends else 0.0
    figures = {g.figure for g in spec.audit.effective_gates}
    attacks = tuple(spec.audit.attacks)
    label = attacks[0] if len(attacks) == 1 else f"max({', '.join(attacks)})"
    bound = auc_bound_for_epsilon(epsilon=claimed_epsilon, delta=claimed_delta)
    epsilon_count, rest = split_epsilon(epsilon)
    shares = _shares(rest, 1 + ("tvd_2way" in figures) + 2 * ("tstr_ratio" in figures))
    k, noisy_count = rows_per_side(len(members), len(non_members), epsilon=epsilon_count,
                                   max_rows=spec.audit.max_audit_rows, noise=noise, account=account)
    count_spend = account.spends[-1]
    if k < 1:
        vacuous = tuple(NoisyFigure(figure=f, value=None, lower=0.0, upper=RATIO_CAP if f == "tstr_ratio" else 1.0,
                                    epsilon=0.0, detail={"rows_per_side": 0}) for f in sorted(figures - {"attack_auc"}))
        published = NoisyAudit(attack=label, attacks=attacks, rows_per_side=0, noisy_auc=None, auc_upper=1.0,
                               auc_lower=0.0, auc_bound=bound, claimed_epsilon=claimed_epsilon,
                               epsilon=count_spend.epsilon, auc_noise_scale=None,
                               count_noise_scale=float(count_spend.detail["scale"]),
                               shortfall_probability=SHORTFALL_PROBABILITY, utility=vacuous)
        return published, AuditDiagnostics(exact=None, slot_auc=None, train_rows=len(members),
                                            holdout_rows=len(non_members), noisy_count=noisy_count,
                                            padded_members=0, padded_non_members=0)
    rng = sampler if sampler is not None else np.random.default_rng(secrets.randbits(128))
    mem = members.iloc[_slots(len(members), k, rng)]
    non = non_members.iloc[_slots(len(non_members), k, rng)]
    reference = domain_sample(spec, max(1, min(len(synthetic), REFERENCE_ROWS)))
    targets = pd.concat([mem, non], ignore_index=True)
    aucs: dict[str, float] = {}
    failed: dict[str, str] = {}
    scored: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the attacks that ran, for the exact figures
    for name in attacks:
        scores, error = _attack_scores(name, synthetic, reference, targets, spec)
        ms, ns = scores[: len(mem)], scores[len(mem):]
        aucs[name] = slot_auc(ms, ns, rows_per_side=k)
        if error is None:
            scored[name] = (ms, ns)
        else:
            failed[name] = error
    statistic = max(aucs.values())
    noisy_auc, scale = release_auc(statistic, rows_per_side=k, epsilon=shares[0], noise=noise, account=account)
    auc_spend = account.spends[-1]
    utility: list[NoisyFigure] = []
    exact_utility: dict[str, float] = {}
    if "tvd_2way" in figures:
        tvd, exact_tvd = tvd_figure(non, synthetic, k=k, epsilon=shares[1], spec=spec, noise=noise,
                                     account=account)
        utility.append(tvd)
        exact_utility["tvd_2way"] = exact_tvd
    if "tstr_ratio" in figures:
        tstr, exact_tstr = tstr_figure(synthetic, members, non, k=k, epsilons=(shares[-2], shares[-1]), spec=spec,
                                        noise=noise, account=account, rng=rng)
        utility.append(tstr)
        exact_utility.update(exact_tstr)
    spent = math.fsum([count_spend.epsilon, auc_spend.epsilon, *(f.epsilon for f in utility)])
    if spent > epsilon:
        raise InternalError(f"the audit spent epsilon {spent!r}, more than its stage's {epsilon!r}")
    sd = math.sqrt(hanley_mcneil_variance(min(max(noisy_auc, 0.0), 1.0), k, k))
    published = NoisyAudit(
        attack=label, attacks=attacks, rows_per_side=k, noisy_auc=noisy_auc,
        auc_upper=auc_upper_bound(noisy_auc, k, k, extra_variance=2.0 * scale**2),
        auc_lower=_lower_bound(noisy_auc, sd, len(attacks), laplace_scale=scale), auc_bound=bound, claimed_epsilon=claimed_epsilon,
        epsilon=spent, auc_noise_scale=scale, count_noise_scale=float(count_spend.detail["scale"]),
        shortfall_probability=SHORTFALL_PROBABILITY, utility=tuple(utility),
    )
    exact = None
    if scored and len(mem) and len(non):
        strongest = max(scored, key=lambda n: aucs[n])
        exact = attack_figures(*scored[strongest], low_fpr=spec.audit.low_fpr, attack=strongest)
    diagnostics = AuditDiagnostics(exact=exact, slot_auc=statistic, train_rows=len(members),
                                   holdout_rows=len(non_members), noisy_count=noisy_count,
                                   padded_members=k - len(mem), padded_non_members=k - len(non),
                                   attack_aucs=aucs, failed_attacks=failed, utility=exact_utility)
    return published, diagnostics
