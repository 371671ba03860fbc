"""Statistics of membership attacks: AUC with a bootstrap interval, TPR at low FPR, copy rates, DP bounds.

Members are the rows the generator was fitted on (label 1), non-members the holdout (label 0); a score is
higher for "more likely a member". Every figure computed from private rows here is exact and belongs to
the restricted zone; :func:`auc_bound_for_epsilon` needs no data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta, rankdata

from safesynth.audit.attacks.confidence import SuccessRate, success_rate

__all__ = [
    "AttackSummary",
    "CopyRates",
    "RateInterval",
    "auc_bound_for_epsilon",
    "bootstrap_auc_interval",
    "clopper_pearson",
    "exact_copy_rates",
    "max_over_attacks",
    "roc_auc",
    "roc_bound_for_epsilon",
    "summarize_attack",
    "tpr_at_fpr",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateInterval:
    """A proportion ``successes / trials`` with a two-sided confidence interval."""

    value: float
    lower: float
    upper: float
    successes: int
    trials: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackSummary:
    """One attack's figures on members vs non-members: restricted zone only."""

    attack: str
    auc: float
    auc_interval: tuple[float, float]
    tpr_at_fpr: dict[float, RateInterval]
    members: int
    non_members: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyRates:
    """Shares of members and of non-members that appear verbatim (all columns) among the synthetic rows."""

    members: SuccessRate
    non_members: SuccessRate
    member_copies: int
    non_member_copies: int


def _check(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(member_scores, dtype=float), np.asarray(non_member_scores, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("the statistic needs at least one member and one non-member score")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise ValueError("attack scores must not be NaN")
    return pos, neg


def roc_auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(member score > non-member score), ties counting 1/2.

    Raises:
        ValueError: a side is empty or a score is NaN.
    """
    pos, neg = _check(member_scores, non_member_scores)
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def bootstrap_auc_interval(member_scores: np.ndarray, non_member_scores: np.ndarray, *,
                           rng: np.random.Generator, resamples: int = 200,
                           level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling members and non-members separately.

    Vectorised over the resamples: with multinomial weights ``w`` (resample counts), the AUC of a resample
    is ``sum_i w1_i (#{w0 below s1_i} + #{w0 tied}/2) / (n1 n0)``; cumulative weights over the sorted
    non-member scores give both counts by one ``searchsorted``. Memory is ``resamples x (n1 + n0)``.

    Raises:
        ValueError: a side is empty, a score is NaN, ``resamples < 1`` or ``level`` outside (0, 1).
    """
    pos, neg = _check(member_scores, non_member_scores)
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"`resamples` ({resamples}) must be >= 1 and `level` ({level}) in (0, 1)")
    n1, n0 = len(pos), len(neg)
    neg_sorted = np.sort(neg)
    left = np.searchsorted(neg_sorted, pos, side="left")
    right = np.searchsorted(neg_sorted, pos, side="right")

    def counts(n: int) -> np.ndarray:
        draws = rng.integers(0, n, size=(resamples, n))
        flat = (draws + (np.arange(resamples) * n)[:, None]).ravel()
        return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)

    w1 = counts(n1)
    w0 = counts(n0)[:, np.argsort(neg, kind="stable")]  # resample counts in sorted order
    cum0 = np.concatenate([np.zeros((resamples, 1), dtype=np.int64), np.cumsum(w0, axis=1)], axis=1)
    below = cum0[:, left]
    tied = cum0[:, right] - below
    aucs = (w1 * (below + 0.5 * tied)).sum(axis=1) / (n1 * n0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def clopper_pearson(successes: int, trials: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial proportion; ``(0, 1)`` without trials."""
    if trials == 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lo, hi


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, *, fpr: float,
               level: float = 0.95) -> RateInterval:
    """The largest TPR of a threshold rule ``score >= t`` whose FPR is at most ``fpr``, with an exact interval.

    The rule flags every row scoring at least ``t``; ``t`` runs over the observed scores and ``+inf`` (flag
    nothing), so ties are never split. The Clopper-Pearson interval treats the threshold as fixed: it
    ignores the threshold's own sampling error (with few non-members, an FPR of 0.1% allows no false
    positive at all).

    Raises:
        ValueError: a side is empty, a score is NaN or ``fpr`` outside [0, 1].
    """
    pos, neg = _check(member_scores, non_member_scores)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"`fpr` ({fpr}) must be in [0, 1]")
    thresholds = np.unique(np.concatenate([pos, neg]))
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    false_pos = len(neg) - np.searchsorted(neg_sorted, thresholds, side="left")
    true_pos = len(pos) - np.searchsorted(pos_sorted, thresholds, side="left")
    allowed = false_pos <= math.floor(fpr * len(neg) + 1e-9)
    best = int(true_pos[allowed].max()) if allowed.any() else 0
    lo, hi = clopper_pearson(best, len(pos), level=level)
    return RateInterval(value=best / len(pos), lower=lo, upper=hi, successes=best, trials=len(pos))


def summarize_attack(member_scores: np.ndarray, non_member_scores: np.ndarray, *, attack: str,
                     rng: np.random.Generator, fprs: Sequence[float] = (0.01, 0.001), resamples: int = 200,
                     level: float = 0.95) -> AttackSummary:
    """AUC with its bootstrap interval and TPR at each of ``fprs`` with exact intervals."""
    return AttackSummary(
        attack=attack, auc=roc_auc(member_scores, non_member_scores),
        auc_interval=bootstrap_auc_interval(member_scores, non_member_scores, rng=rng, resamples=resamples,
                                            level=level),
        tpr_at_fpr={f: tpr_at_fpr(member_scores, non_member_scores, fpr=f, level=level) for f in fprs},
        members=len(member_scores), non_members=len(non_member_scores))


def max_over_attacks(summaries: Iterable[AttackSummary]) -> AttackSummary:
    """The strongest attack: highest AUC (then highest interval upper end, then name, for determinism).

    Synth-MIA (Ward et al. 2025) finds no single attack dominates; the audit reports the maximum.

    Raises:
        ValueError: no summaries.
    """
    items = list(summaries)
    if not items:
        raise ValueError("`summaries` must hold at least one attack")
    return max(items, key=lambda s: (s.auc, s.auc_interval[1], s.attack))


def _row_hashes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """One 64-bit hash per row over ``columns``, canonical across dtypes (numbers as float, nulls alike)."""
    canon: dict[str, pd.Series] = {}
    for c in columns:
        s = frame[c]
        if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
            canon[c] = s.astype("Float64").astype(object).where(s.notna(), None).map(
                lambda v: "<null>" if v is None else repr(float(v)))
        else:
            canon[c] = s.astype(object).where(s.notna(), None).map(lambda v: "<null>" if v is None else str(v))
    table = pd.DataFrame(canon, index=range(len(frame)))
    return np.asarray(pd.util.hash_pandas_object(table, index=False).to_numpy(), dtype=np.uint64)


def exact_copy_rates(synthetic: pd.DataFrame, members: pd.DataFrame, non_members: pd.DataFrame, *,
                     columns: Sequence[str] | None = None, confidence_level: float = 0.95) -> CopyRates:
    """Share of members, and of non-members, whose whole row (``columns``) appears among the synthetic rows.

    A member copied more often than a non-member is a memorised row; the non-member rate is what chance
    duplicates (small domains) alone produce. Rates are Wilson estimates (:mod:`.attacks.confidence`).

    Raises:
        ValueError: a side is empty.
    """
    cols = list(synthetic.columns) if columns is None else list(columns)
    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("copy rates need at least one member and one non-member row")
    released = np.unique(_row_hashes(synthetic, cols))
    mem = int(np.isin(_row_hashes(members, cols), released).sum())
    non = int(np.isin(_row_hashes(non_members, cols), released).sum())
    return CopyRates(
        members=success_rate(n_total=len(members), n_success=mem, confidence_level=confidence_level),
        non_members=success_rate(n_total=len(non_members), n_success=non, confidence_level=confidence_level),
        member_copies=mem, non_member_copies=non)


def auc_bound_for_epsilon(*, epsilon: float, delta: float = 0.0) -> float:
    """The largest ROC AUC any membership attack can reach against an ``(epsilon, delta)``-DP release.

    Derivation. A test of "member" against "non-member" is a rejection region; DP bounds both of its error
    trade-offs (Kairouz, Oh and Viswanath 2015; Wasserman and Zhou 2010), so every ROC point lies in

        TPR <= e^eps FPR + delta   and   1 - FPR <= e^eps (1 - TPR) + delta.

    The best curve is ``f(x) = min(e^eps x + delta, 1 - e^-eps (1 - delta - x), 1)``. Its two lines cross at
    ``x* = (1 - delta) / (1 + e^eps)`` and the second reaches 1 at ``x = 1 - delta``; integrating,

        AUC <= (1 - delta)(e^eps + delta) / (1 + e^eps) + delta,

    which is ``e^eps / (1 + e^eps)`` for pure DP (the two triangles' areas cancel) and is reached by
    randomised response. The often quoted ``1 - 1 / (2 e^eps)`` uses only the first constraint and is
    looser. An attack whose AUC beats this bound beyond its sampling error indicates an implementation
    error (or a privacy bug), never a strong attack.

    Raises:
        ValueError: ``epsilon < 0`` or ``delta`` outside [0, 1].
    """
    if not epsilon >= 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"`epsilon` ({epsilon}) must be >= 0 and `delta` ({delta}) in [0, 1]")
    if math.isinf(epsilon):
        return 1.0
    # e^eps / (1 + e^eps) as a logistic and 1 / (1 + e^eps) = e^-eps * share: no overflow for large epsilon.
    share = 1.0 / (1.0 + math.exp(-epsilon))
    return min(1.0, (1.0 - delta) * (share + delta * math.exp(-epsilon) * share) + delta)


def roc_bound_for_epsilon(fpr: np.ndarray, *, epsilon: float, delta: float = 0.0) -> np.ndarray:
    """The highest TPR any membership test can reach at each ``fpr`` against an ``(epsilon, delta)``-DP release.

    ``min(e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR), 1)``: the two trade-off constraints of
    :func:`auc_bound_for_epsilon`, whose area under this curve it is.

    Raises:
        ValueError: ``epsilon < 0``, ``delta`` outside [0, 1] or an ``fpr`` outside [0, 1].
    """
    if not epsilon >= 0 or not 0.0 <= delta <= 1.0:
        raise ValueError(f"`epsilon` ({epsilon}) must be >= 0 and `delta` ({delta}) in [0, 1]")
    x = np.asarray(fpr, dtype=float)
    if ((x < 0) | (x > 1) | np.isnan(x)).any():
        raise ValueError("`fpr` must lie in [0, 1]")
    if math.isinf(epsilon):
        return np.ones_like(x)
    first = math.exp(min(epsilon, 700.0)) * x + delta  # beyond e^700 the line is 1 at any positive FPR anyway
    second = 1.0 - math.exp(-epsilon) * (1.0 - delta - x)
    return np.asarray(np.minimum(np.minimum(first, second), 1.0), dtype=float)
