"""Utility figures with small sensitivity, released with Laplace noise for the published utility gates.

The published gates may read only DP figures: :func:`tvd_figure` and :func:`tstr_figure` noise these
statistics and charge the audit stage (called by :func:`safesynth.audit.membership.audit_membership` on its
slots). Each statistic is built so that one record moves it by a stated amount:

* :func:`slot_tvd_2way`: the mean 2-way total variation distance between the synthetic rows and ``k``
  real slots (the audit's non-member slots, a uniform sample of the holdout). A slot is one row; a missing
  slot (a shortfall of the DP count) is a *dummy* in a cell of its own that the synthetic rows never fill,
  so it can only raise the distance (fails closed). One slot moves each pair's TVD, and so the mean, by at
  most ``1 / k``.
* :func:`partitioned_accuracy`: the mean accuracy, on the ``k`` slots, of classifiers of
  ``audit.target_column`` each fitted on one of ``m`` disjoint parts of a training table (subsample and
  aggregate, Nissim, Raskhodnikova and Smith 2007). A dummy slot counts as a wrong prediction. One slot
  moves every accuracy by at most ``1 / k``; one training record is in one part, so it moves one of the
  ``m`` accuracies by at most 1 and the mean by ``1 / m``. On the synthetic rows (public) the parts are a
  seeded split; on the fitted rows (private) each record's part is its own secret draw, so adding or
  removing a record changes no other record's part.

TSTR / TRTR is then the ratio of the two noisy means (post-processing). Both sides use ``m`` parts of about
the same size, so the ratio compares like with like; it is lower than a full-data TSTR / TRTR would be
only in the (reported) noise.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.stats import norm

from safesynth.audit.noisy import NoisyFigure, release_statistic
from safesynth.audit.utility import binned, predict_labels
from safesynth.errors import InternalError
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.noise import NoiseSource
from safesynth.spec import BooleanColumn, CategoricalColumn, FloatColumn, IntegerColumn, ReleaseSpec

__all__ = ["DUMMY", "RATIO_CAP", "fallback_label", "partitioned_accuracy", "slot_tvd_2way", "tabular_columns",
           "tstr_figure", "tvd_figure"]

#: The cell of a missing slot: no synthetic row has it.
DUMMY = "<missing slot>"


def _pair_tvd(real: pd.Series, synthetic: pd.Series, *, rows_per_side: int) -> float:
    k = rows_per_side
    p = real.value_counts() / k
    q = synthetic.value_counts(normalize=True) if len(synthetic) else pd.Series(dtype=float)
    dummies = (k - len(real)) / k
    return float(0.5 * (p.sub(q, fill_value=0.0).abs().sum() + dummies))


def slot_tvd_2way(real_slots: pd.DataFrame, synthetic: pd.DataFrame, spec: ReleaseSpec, *,
                  rows_per_side: int) -> float:
    """Mean 2-way TVD of ``rows_per_side`` real slots (missing ones are dummies) against the synthetic rows.

    The pairs and bins of :func:`safesynth.audit.utility.marginal_tvd` (declared domains only; text and
    datetime columns left out). With fewer than two such columns there is no pair and the figure is 0.

    Raises:
        ValueError: ``rows_per_side < 1`` or more real rows than slots.
    """
    k = rows_per_side
    if k < 1 or len(real_slots) > k:
        raise ValueError(f"`rows_per_side` ({k}) must be >= 1 and hold every real row ({len(real_slots)})")
    r, s = binned(real_slots, spec), binned(synthetic, spec)
    pairs = list(itertools.combinations(r.columns, 2))
    if not pairs:
        return 0.0

    def joint(frame: pd.DataFrame, a: str, b: str) -> pd.Series:
        return frame[a].astype(str) + "\x1f" + frame[b].astype(str)

    values = [_pair_tvd(joint(r, a, b), joint(s, a, b), rows_per_side=k) for a, b in pairs]
    return float(np.mean(values))


def fallback_label(spec: ReleaseSpec, target: str) -> object:
    """A public label predicted by a classifier with nothing to learn from: the first declared value."""
    col = spec.columns[target]
    if isinstance(col, BooleanColumn):
        return "False"
    if isinstance(col, CategoricalColumn) and col.categories:
        return col.categories[0]
    return "<none>"


def tabular_columns(spec: ReleaseSpec, target: str) -> list[str]:
    """The classifier's columns: integer, float, categorical and boolean ones (texts and dates left out)."""
    names = [n for n, c in spec.columns.items()
             if isinstance(c, IntegerColumn | FloatColumn | CategoricalColumn | BooleanColumn)]
    return names if target in names else [*names, target]


def _labels(frame: pd.DataFrame, target: str) -> np.ndarray:
    s = frame[target]
    return np.asarray(s.astype(object).where(s.notna(), "<null>").astype(str).to_numpy(), dtype=object)


def partitioned_accuracy(train: pd.DataFrame, parts: np.ndarray, test_slots: pd.DataFrame, *, target: str,
                         partitions: int, rows_per_side: int, spec: ReleaseSpec) -> float:
    """Mean over ``partitions`` parts of ``train`` of a classifier's accuracy on ``rows_per_side`` slots.

    Args:
        train: the rows the classifiers learn from.
        parts: each training row's part, in ``[0, partitions)``.
        test_slots: the real test rows (at most ``rows_per_side``; missing slots count as wrong).
        target: the label column (categorical or boolean).
        partitions: how many parts (``m``).
        rows_per_side: the number of test slots (``k``).
        spec: the resolved spec (the public fallback label of an empty part).

    Raises:
        ValueError: ``parts`` does not match ``train`` or holds a part outside the range, or more test rows
            than slots.
    """
    if len(parts) != len(train) or (len(parts) and (parts.min() < 0 or parts.max() >= partitions)):
        raise ValueError(f"`parts` must give each of the {len(train)} rows a part in [0, {partitions})")
    if len(test_slots) > rows_per_side:
        raise ValueError(f"`rows_per_side` ({rows_per_side}) must hold every test row ({len(test_slots)})")
    columns = tabular_columns(spec, target)
    train, test_slots = train[columns], test_slots[columns]
    truth = _labels(test_slots, target)
    fallback = fallback_label(spec, target)
    accuracies = []
    for part in range(partitions):
        chunk = train[parts == part]
        predicted = predict_labels(chunk, test_slots, target=target, fallback=fallback).astype(str)
        accuracies.append(float(np.sum(predicted == truth)) / rows_per_side)
    return float(np.mean(accuracies))


#: The TSTR / TRTR ratio's upper bound is capped here (its denominator's lower bound can be 0).
RATIO_CAP = 10.0


def tvd_figure(non: pd.DataFrame, synthetic: pd.DataFrame, *, k: int, epsilon: float, spec: ReleaseSpec,
                noise: NoiseSource, account: ReleaseAccount) -> tuple[NoisyFigure, float]:
    """Stage ``audit.tvd_2way``: the noisy :func:`slot_tvd_2way` (sensitivity ``1 / k``) and the exact value."""
    exact = slot_tvd_2way(non, synthetic, spec, rows_per_side=k)
    noisy, scale = release_statistic(exact, stage="audit.tvd_2way", sensitivity=1.0 / k, epsilon=epsilon, noise=noise,
                            account=account, statistic="mean 2-way TVD of k holdout slots vs synthetic rows")
    sd = math.sqrt(2.0) * scale  # the noise; the sampling error of k slots is left to the margin of the gate
    z = float(norm.ppf(0.95))
    return NoisyFigure(figure="tvd_2way", value=noisy, lower=max(0.0, noisy - z * sd), upper=min(1.0, noisy + z * sd),
                       epsilon=account.spends[-1].epsilon,
                       detail={"rows_per_side": k, "noise_scale": scale, "sensitivity": 1.0 / k}), exact


def tstr_figure(synthetic: pd.DataFrame, members: pd.DataFrame, non: pd.DataFrame, *, k: int,
                 epsilons: tuple[float, float], spec: ReleaseSpec, noise: NoiseSource, account: ReleaseAccount,
                 rng: np.random.Generator) -> tuple[NoisyFigure, dict[str, float]]:
    """Stages ``audit.tstr`` and ``audit.trtr``: the noisy TSTR / TRTR ratio and the exact accuracies.

    ``rng`` is the audit's secret randomness (each fitted record's part); ``epsilons`` the two stages'.
    """
    target = spec.audit.target_column
    if target is None:
        raise InternalError("the tstr_ratio figure needs `audit.target_column`")
    m = spec.audit.tstr_partitions
    synthetic_parts = np.random.default_rng(0).integers(0, m, len(synthetic))  # public rows: a seeded split
    member_parts = rng.integers(0, m, len(members))  # secret, one draw per record
    tstr = partitioned_accuracy(synthetic, synthetic_parts, non, target=target, partitions=m, rows_per_side=k,
                                spec=spec)
    trtr = partitioned_accuracy(members, member_parts, non, target=target, partitions=m, rows_per_side=k, spec=spec)
    noisy_s, scale_s = release_statistic(tstr, stage="audit.tstr", sensitivity=1.0 / k, epsilon=epsilons[0], noise=noise,
                                account=account, statistic="mean accuracy on k holdout slots of classifiers "
                                "fitted on m parts of the synthetic rows")
    eps_s = account.spends[-1].epsilon
    sensitivity_r = max(1.0 / m, 1.0 / k)
    noisy_r, scale_r = release_statistic(trtr, stage="audit.trtr", sensitivity=sensitivity_r, epsilon=epsilons[1],
                                noise=noise, account=account, statistic="mean accuracy on k holdout slots of "
                                "classifiers fitted on m disjoint parts of the fitted rows")
    eps_r = account.spends[-1].epsilon
    s, r = min(max(noisy_s, 0.0), 1.0), min(max(noisy_r, 0.0), 1.0)
    z = float(norm.ppf(1.0 - 0.05 / 4))  # two one-sided bounds at 97.5% each, and each has two error terms

    def sd(p: float, scale: float) -> float:
        return math.sqrt(p * (1.0 - p) / k + 2.0 * scale**2)

    s_low, r_high = max(0.0, s - z * sd(s, scale_s)), min(1.0, r + z * sd(r, scale_r))
    s_high, r_low = min(1.0, s + z * sd(s, scale_s)), max(0.0, r - z * sd(r, scale_r))
    value = s / r if r > 0 else None
    figure = NoisyFigure(
        figure="tstr_ratio", value=value, lower=s_low / r_high if r_high > 0 else 0.0,
        upper=min(RATIO_CAP, s_high / r_low) if r_low > 0 else RATIO_CAP, epsilon=math.fsum([eps_s, eps_r]),
        detail={"noisy_tstr_accuracy": noisy_s, "noisy_trtr_accuracy": noisy_r, "partitions": m,
                "rows_per_side": k, "target_column": target, "tstr_noise_scale": scale_s,
                "trtr_noise_scale": scale_r, "trtr_sensitivity": sensitivity_r})
    return figure, {"tstr_accuracy": tstr, "trtr_accuracy": trtr}
