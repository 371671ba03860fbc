"""Linkability risk, in anonymeter's style.

Method (anonymeter's ``evaluators/linkability_evaluator.py``; statice/anonymeter, reimplemented): the
attacker holds two tables about the same people, one with columns ``A`` and one with columns ``B``, and
tries to join them through the synthetic rows: for each target, find its ``neighbours`` nearest synthetic
rows on ``A`` and on ``B``; the link succeeds when the two lists share a synthetic row. The rate on
members (the training rows) is compared with the rate on as many non-members (the holdout) as control;
the baseline draws both lists at random. Risk and intervals as in :mod:`.confidence`. Distances are
Euclidean over :func:`featurize`'s features of each half.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from safesynth.audit.attacks.confidence import EvaluationResult, evaluation_result
from safesynth.audit.attacks.features import featurize
from safesynth.audit.attacks.inference import equal_samples
from safesynth.spec import ReleaseSpec

__all__ = ["linkability", "shared_neighbour"]


def shared_neighbour(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per row of two ``(targets, k)`` index arrays: whether they share an index."""
    return np.asarray((first[:, :, None] == second[:, None, :]).any(axis=(1, 2)))


def linkability(
    *,
    synthetic: pd.DataFrame,
    members: pd.DataFrame,
    non_members: pd.DataFrame,
    aux_columns: tuple[Sequence[str], Sequence[str]],
    spec: ReleaseSpec,
    rng: np.random.Generator,
    neighbours: int = 1,
    max_rows: int | None = 5_000,
    confidence_level: float = 0.95,
) -> EvaluationResult:
    """Linkability risk of joining ``aux_columns[0]`` with ``aux_columns[1]`` through the synthetic rows.

    Raises:
        ValueError: a half is empty or undeclared, the halves overlap, ``neighbours < 1`` or a frame has
            no rows.
    """
    first, second = list(aux_columns[0]), list(aux_columns[1])
    if not first or not second or set(first) & set(second) or not set(first + second) <= set(spec.columns):
        raise ValueError("`aux_columns` must be two non-empty, disjoint lists of declared columns")
    if neighbours < 1 or len(synthetic) == 0:
        raise ValueError(f"`neighbours` ({neighbours}) must be >= 1 and there must be synthetic rows")
    mem, non = equal_samples(members, non_members, rng=rng, max_rows=max_rows)
    k = min(neighbours, len(synthetic))
    index_a = NearestNeighbors(n_neighbors=k).fit(featurize(synthetic, spec, columns=first))
    index_b = NearestNeighbors(n_neighbors=k).fit(featurize(synthetic, spec, columns=second))

    def linked(targets: pd.DataFrame) -> int:
        a = index_a.kneighbors(featurize(targets, spec, columns=first), return_distance=False)
        b = index_b.kneighbors(featurize(targets, spec, columns=second), return_distance=False)
        return int(shared_neighbour(a, b).sum())

    shape = (len(mem), k)
    random = shared_neighbour(rng.integers(0, len(synthetic), shape), rng.integers(0, len(synthetic), shape))
    return evaluation_result(attack="linkability", n_attacks=len(mem), n_success=linked(mem),
                             n_control=len(non), n_control_success=linked(non),
                             n_baseline_success=int(random.sum()), confidence_level=confidence_level)
