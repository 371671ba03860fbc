"""Distance to closest record (DCR), the baseline membership attack.

A record is guessed to be a *member* (a row the generator was fitted on) when some synthetic row lies
unusually close to it. Members are fitted rows, non-members are the holdout, which the generator never
saw. The attack's ROC AUC is 0.5 when the synthetic data carries no more information about members than
about non-members, and 1.0 for a copy of the training data. DCR alone is a weak attack ("The DCR
Delusion", Yao et al. 2025); it stays as the baseline and as the statistic of the DP audit.

Everything here is **exact** and belongs to the restricted zone (the attempt's reports directory): the
figures are computed on private rows and are not differentially private. What decides publication is the
differentially private audit in :mod:`safesynth.audit.membership`, which uses :func:`dcr_scores` (a
score per record, from that record and the synthetic rows alone) and releases a noisy AUC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from safesynth.audit.attacks.base import register
from safesynth.audit.attacks.features import featurize
from safesynth.audit.attacks.figures import AttackResult, attack_figures
from safesynth.spec import ReleaseSpec

__all__ = ["DistanceToClosestRecord", "dcr_attack", "dcr_scores"]


def dcr_scores(synthetic: pd.DataFrame, *frames: pd.DataFrame, spec: ReleaseSpec) -> list[np.ndarray]:
    """Membership scores (higher: more likely a member), one array per frame: minus the distance to the
    closest synthetic row.

    A record's score depends on that record, the synthetic rows and the spec only (never on the other
    records of its frame): the DP audit's sensitivity argument needs exactly this.
    """
    index = NearestNeighbors(n_neighbors=1).fit(featurize(synthetic, spec))
    return [-index.kneighbors(featurize(f, spec))[0][:, 0] if len(f) else np.zeros(0) for f in frames]


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DistanceToClosestRecord:
    """Minus the Euclidean distance from a target to its closest synthetic row (``reference`` unused)."""

    name: ClassVar[str] = "distance-to-closest-record"

    def scores(self, *, synthetic: pd.DataFrame, reference: pd.DataFrame, targets: pd.DataFrame,
               spec: ReleaseSpec) -> np.ndarray:
        """See :class:`~safesynth.audit.attacks.base.MembershipAttack`."""
        return dcr_scores(synthetic, targets, spec=spec)[0]


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
