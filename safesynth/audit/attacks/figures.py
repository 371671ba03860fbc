"""Exact membership-attack figures with Hanley & McNeil / Wilson bounds (the gate's historical figures).

Everything here is **exact** and belongs to the restricted zone (the attempt's reports directory): the
figures are computed on private rows and are not differentially private. For bootstrap intervals and TPR
at several low FPRs see :mod:`safesynth.audit.stats`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["AttackResult", "attack_figures", "auc_upper_bound", "hanley_mcneil_variance"]

_Z95 = 1.6448536269514722  # one-sided 95%


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
    """Exact attack figures on private rows: restricted zone only (never logged or published)."""

    attack: str
    auc: float
    auc_upper: float
    tpr_at_low_fpr: float
    tpr_upper: float
    low_fpr: float
    members: int
    non_members: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hanley_mcneil_variance(auc: float, n_pos: int, n_neg: int) -> float:
    """Variance of an AUC estimate from ``n_pos`` positives and ``n_neg`` negatives (Hanley & McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return max(var, 0.0)


def auc_upper_bound(auc: float, n_pos: int, n_neg: int, *, extra_variance: float = 0.0) -> float:
    """One-sided 95% upper bound on the AUC: Hanley & McNeil's standard error plus ``extra_variance``.

    ``auc`` is clipped to [0, 1] for the variance only; the bound is capped at 1.
    """
    var = hanley_mcneil_variance(min(max(auc, 0.0), 1.0), n_pos, n_neg) + extra_variance
    return min(1.0, auc + _Z95 * math.sqrt(var))


def _wilson_upper(p: float, n: int) -> float:
    if n == 0:
        return 1.0
    z2 = _Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return min(1.0, centre + half)


def attack_figures(member_scores: np.ndarray, non_member_scores: np.ndarray, *, low_fpr: float,
                   attack: str = "distance-to-closest-record") -> AttackResult:
    """Exact AUC, TPR at ``low_fpr`` and their 95% upper bounds (restricted diagnostics).

    Raises:
        ValueError: there are no members or no non-members.
    """
    n_pos, n_neg = len(member_scores), len(non_member_scores)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the audit needs at least one member and one non-member row")
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    scores = np.r_[member_scores, non_member_scores]
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    tpr_low = float(tpr[fpr <= low_fpr].max()) if (fpr <= low_fpr).any() else 0.0
    return AttackResult(
        attack=attack,
        auc=auc,
        auc_upper=auc_upper_bound(auc, n_pos, n_neg),
        tpr_at_low_fpr=tpr_low,
        tpr_upper=_wilson_upper(tpr_low, n_pos),
        low_fpr=low_fpr,
        members=n_pos,
        non_members=n_neg,
    )
