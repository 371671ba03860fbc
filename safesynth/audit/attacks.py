"""Membership-inference attacks on synthetic data.

Distance to closest record (DCR): a record is guessed to be a *member* (a row the generator was fitted
on) when some synthetic row lies unusually close to it. Members are fitted rows, non-members are the
holdout, which the generator never saw. The attack's ROC AUC is 0.5 when the synthetic data carries no
more information about members than about non-members, and 1.0 for a copy of the training data.

The figures are computed on private rows and are *not* differentially private: they are an empirical
check on top of the DP guarantee, meant for the data owner. The gate compares a one-sided 95% upper
confidence bound against the threshold, so a release passes only when the attack is confidently weak.
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

__all__ = ["AttackResult", "dcr_attack", "featurize"]

_Z95 = 1.6448536269514722  # one-sided 95%


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackResult:
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


def _auc_upper(auc: float, n_pos: int, n_neg: int) -> float:
    """One-sided 95% upper bound on the AUC (Hanley & McNeil 1982 standard error)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return min(1.0, auc + _Z95 * math.sqrt(max(var, 0.0)))


def _wilson_upper(p: float, n: int) -> float:
    if n == 0:
        return 1.0
    z2 = _Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return min(1.0, centre + half)


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
    """Distance-to-closest-record membership attack; equal numbers of members and non-members.

    Raises:
        ValueError: there are no members or no non-members to attack.
    """
    n = min(len(members), len(non_members), max_rows)
    if n == 0:
        raise ValueError("the audit needs at least one member and one non-member row")
    rng = np.random.default_rng(seed)
    mem = members.iloc[rng.choice(len(members), n, replace=False)]
    non = non_members.iloc[rng.choice(len(non_members), n, replace=False)]
    index = NearestNeighbors(n_neighbors=1).fit(featurize(synthetic, spec))
    dist_mem = index.kneighbors(featurize(mem, spec))[0][:, 0]
    dist_non = index.kneighbors(featurize(non, spec))[0][:, 0]
    labels = np.r_[np.ones(n), np.zeros(n)]
    scores = -np.r_[dist_mem, dist_non]  # closer => more likely a member
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    tpr_low = float(tpr[fpr <= low_fpr].max()) if (fpr <= low_fpr).any() else 0.0
    return AttackResult(
        attack="distance-to-closest-record",
        auc=auc,
        auc_upper=_auc_upper(auc, n, n),
        tpr_at_low_fpr=tpr_low,
        tpr_upper=_wilson_upper(tpr_low, n),
        low_fpr=low_fpr,
        members=n,
        non_members=n,
    )
