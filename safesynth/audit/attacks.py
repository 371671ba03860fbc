"""Membership-inference attacks on synthetic data.

Distance to closest record (DCR): a record is guessed to be a *member* (a row the generator was fitted
on) when some synthetic row lies unusually close to it. Members are fitted rows, non-members are the
holdout, which the generator never saw. The attack's ROC AUC is 0.5 when the synthetic data carries no
more information about members than about non-members, and 1.0 for a copy of the training data.

Everything here is **exact** and belongs to the restricted zone (the attempt's reports directory): the
figures are computed on private rows and are not differentially private. What decides publication is the
differentially private audit in :mod:`safesynth.audit.membership`, which uses :func:`dcr_scores` (a
score per record, from that record and the synthetic rows alone) and releases a noisy AUC.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

from safesynth.domains import bounds_of, categories_of
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
    ReleaseSpec,
    TextColumn,
)

__all__ = [
    "AttackResult",
    "attack_figures",
    "auc_upper_bound",
    "dcr_attack",
    "dcr_scores",
    "featurize",
    "hanley_mcneil_variance",
]

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


def featurize(frame: pd.DataFrame, spec: ReleaseSpec) -> np.ndarray:
    """Numeric features on a common scale, from the declared domains only.

    Numbers and datetimes are scaled by their declared range to [0, 1]; categories are one-hot over the
    declared categories (each weighted 1/sqrt(2) so a mismatch costs 1, like a full-range numeric gap);
    texts contribute their length (scaled) and a 16-bucket hashed character profile; nulls get an
    indicator.
    """
    parts: list[np.ndarray] = []
    for name, col in spec.columns.items():
        s = frame[name]
        null = s.isna().to_numpy()
        if isinstance(col, CategoricalColumn):
            categories = categories_of(col)
            # -1 for a null or a value outside the (discovered) categories: no one-hot bit, never an error.
            codes = pd.Index(list(categories)).get_indexer(s.astype(object).where(~null, None))
            onehot = np.zeros((len(s), len(categories)))
            ok = codes >= 0
            onehot[np.flatnonzero(ok), codes[ok]] = 1 / math.sqrt(2)
            parts.append(onehot)
        elif isinstance(col, BooleanColumn):
            parts.append(s.fillna(False).astype(bool).to_numpy(dtype=float)[:, None])
        elif isinstance(col, IntegerColumn | FloatColumn):
            lo, hi = bounds_of(col)
            width = float(hi - lo) or 1.0
            x = (s.astype("Float64").fillna(lo).to_numpy(dtype=float) - lo) / width
            parts.append(x[:, None])
        elif isinstance(col, DatetimeColumn):
            lo, hi = col.min.timestamp(), col.max.timestamp()
            secs = pd.to_datetime(s).astype("datetime64[us]").astype("int64").to_numpy() / 1e6
            parts.append(np.where(null, 0.0, (secs - lo) / (hi - lo))[:, None])
        elif isinstance(col, TextColumn):
            texts = s.fillna("").astype(str)
            length = texts.str.len().to_numpy(dtype=float) / col.max_length
            profile = np.zeros((len(s), 16))
            for i, t in enumerate(texts):
                if t:
                    b = np.bincount([ord(ch) % 16 for ch in t], minlength=16)
                    profile[i] = b / b.sum()
            parts.append(np.column_stack([length, profile]))
        if col.nullable:
            parts.append(null.astype(float)[:, None])
    return np.hstack(parts) if parts else np.zeros((len(frame), 0))


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


def dcr_scores(synthetic: pd.DataFrame, *frames: pd.DataFrame, spec: ReleaseSpec) -> list[np.ndarray]:
    """Membership scores (higher: more likely a member), one array per frame: minus the distance to the
    closest synthetic row.

    A record's score depends on that record, the synthetic rows and the spec only (never on the other
    records of its frame): the DP audit's sensitivity argument needs exactly this.
    """
    index = NearestNeighbors(n_neighbors=1).fit(featurize(synthetic, spec))
    return [-index.kneighbors(featurize(f, spec))[0][:, 0] if len(f) else np.zeros(0) for f in frames]


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


def dcr_attack(
    synthetic: pd.DataFrame,
    members: pd.DataFrame,
    non_members: pd.DataFrame,
    *,
    spec: ReleaseSpec,
    low_fpr: float = 0.01,
    max_rows: int = 5_000,
    seed: int = 0,
) -> AttackResult:
    """Exact distance-to-closest-record attack on equal numbers of members and non-members.

    For benchmarks and diagnostics only: its figures are not DP (see :mod:`safesynth.audit.membership`
    for the audit that gates a release).

    Raises:
        ValueError: there are no members or no non-members to attack.
    """
    n = min(len(members), len(non_members), max_rows)
    if n == 0:
        raise ValueError("the audit needs at least one member and one non-member row")
    rng = np.random.default_rng(seed)
    mem = members.iloc[rng.choice(len(members), n, replace=False)]
    non = non_members.iloc[rng.choice(len(non_members), n, replace=False)]
    scores_mem, scores_non = dcr_scores(synthetic, mem, non, spec=spec)
    return attack_figures(scores_mem, scores_non, low_fpr=low_fpr)
