"""Attribute inference on a sensitive column, in anonymeter's style.

Method (anonymeter's ``evaluators/inference_evaluator.py``, statice/anonymeter, reimplemented: anonymeter
does not install beside our pins): an attacker who knows a target's other columns (``aux_columns``) guesses
its ``secret`` from the closest synthetic row on those columns. The attack runs on members (rows the
generator was fitted on) and, as control, on as many non-members (the holdout): what it achieves on the
control is what the synthetic data teaches about the population; the excess on members is the leak. A
naive baseline guesses from a random synthetic row (the synthetic marginal). The risk is
``(members_rate - control_rate) / (1 - control_rate)`` with anonymeter's Wilson-score errors
(:mod:`.confidence`).

Distances are Euclidean over :func:`featurize`'s features of the auxiliary columns (anonymeter uses a
Gower-like mixed-type distance; ours weighs columns the same way, by their declared domains). A numeric
guess is correct within a relative ``tolerance`` (anonymeter's 5 %); two nulls match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from safesynth.audit.attacks.confidence import EvaluationResult, evaluation_result
from safesynth.audit.attacks.features import featurize
from safesynth.spec import FloatColumn, IntegerColumn, ReleaseSpec

__all__ = ["attribute_inference", "equal_samples", "inference_matches"]


def equal_samples(members: pd.DataFrame, non_members: pd.DataFrame, *, rng: np.random.Generator,
                  max_rows: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Uniform samples of equal size (the smaller side's, capped at ``max_rows``) from both sides.

    Raises:
        ValueError: a side has no rows.
    """
    n = min(len(members), len(non_members), max_rows if max_rows is not None else len(members))
    if n < 1:
        raise ValueError("the attack needs at least one member and one non-member row")
    return (members.iloc[rng.choice(len(members), n, replace=False)],
            non_members.iloc[rng.choice(len(non_members), n, replace=False)])


def inference_matches(guesses: pd.Series, secrets: pd.Series, *, numeric: bool,
                      tolerance: float = 0.05) -> np.ndarray:
    """Which guesses are right: equal values, both null, or (numeric) within relative ``tolerance``."""
    g = guesses.reset_index(drop=True)
    s = secrets.reset_index(drop=True)
    both_null = (g.isna() & s.isna()).to_numpy()
    if numeric:
        gv = g.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        sv = s.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            close = np.abs(gv - sv) <= tolerance * np.maximum(np.abs(sv), 1e-12)
        return np.asarray(both_null | np.nan_to_num(close, nan=0.0).astype(bool))
    equal = (g.astype(object) == s.astype(object)).fillna(False).to_numpy(dtype=bool)
    return np.asarray(both_null | (equal & ~g.isna().to_numpy()))


def attribute_inference(
    *,
    synthetic: pd.DataFrame,
    members: pd.DataFrame,
    non_members: pd.DataFrame,
    secret: str,
    spec: ReleaseSpec,
    rng: np.random.Generator,
    aux_columns: Sequence[str] | None = None,
    max_rows: int | None = 5_000,
    tolerance: float = 0.05,
    confidence_level: float = 0.95,
) -> EvaluationResult:
    """Inference risk on ``secret``: nearest synthetic row on ``aux_columns`` (default: all others).

    Args:
        synthetic: the released rows.
        members: rows the generator was fitted on.
        non_members: the holdout (control); equal-size samples of both sides are attacked.
        secret: the sensitive column.
        spec: the resolved spec (declared domains for the distances).
        rng: picks the samples and the baseline's random guesses.
        aux_columns: what the attacker knows (default: every other declared column).
        max_rows: cap on targets per side.
        tolerance: relative tolerance of a numeric guess.
        confidence_level: of the Wilson intervals.

    Raises:
        ValueError: ``secret`` is not a declared column, the auxiliary columns are empty, or a frame has
            no rows.
    """
    if secret not in spec.columns:
        raise ValueError(f"`secret` ({secret}) must be a declared column")
    aux = [c for c in spec.columns if c != secret] if aux_columns is None else list(aux_columns)
    if not aux or secret in aux or not set(aux) <= set(spec.columns):
        raise ValueError("`aux_columns` must be declared columns other than the secret, at least one")
    if len(synthetic) == 0:
        raise ValueError("the attack needs at least one synthetic row")
    mem, non = equal_samples(members, non_members, rng=rng, max_rows=max_rows)
    numeric = isinstance(spec.columns[secret], IntegerColumn | FloatColumn)
    index = NearestNeighbors(n_neighbors=1).fit(featurize(synthetic, spec, columns=aux))
    syn_secret = synthetic[secret].reset_index(drop=True)

    def successes(targets: pd.DataFrame) -> int:
        nearest = index.kneighbors(featurize(targets, spec, columns=aux), return_distance=False)[:, 0]
        return int(inference_matches(syn_secret.iloc[nearest], targets[secret], numeric=numeric,
                                     tolerance=tolerance).sum())

    naive = syn_secret.iloc[rng.integers(0, len(syn_secret), len(mem))]
    baseline = int(inference_matches(naive, mem[secret], numeric=numeric, tolerance=tolerance).sum())
    return evaluation_result(attack=f"inference:{secret}", n_attacks=len(mem), n_success=successes(mem),
                             n_control=len(non), n_control_success=successes(non),
                             n_baseline_success=baseline, confidence_level=confidence_level)
