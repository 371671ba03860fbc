"""Utility of synthetic data: marginal distances, correlation differences, train-synthetic-test-real.

Shared by the benchmarks (``bench/``) and the release audit, so both report the same numbers. Exact
figures on private rows: restricted zone only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from safesynth.domains import bounds_of
from safesynth.spec import BooleanColumn, CategoricalColumn, FloatColumn, IntegerColumn, ReleaseSpec

__all__ = ["CorrelationDifference", "TstrComparison", "binned", "correlation_difference", "marginal_tvd",
           "pairwise_tvd", "predict_labels", "tstr", "tstr_vs_trtr"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrelationDifference:
    """Absolute differences of Pearson correlations between numeric column pairs, real vs synthetic."""

    mean_abs: float
    max_abs: float
    pairs: tuple[tuple[str, str, float], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TstrComparison:
    """A classifier trained on synthetic rows (TSTR) next to one trained on real rows (TRTR), same test.

    ``roc_auc_ratio`` is ``tstr_roc_auc / trtr_roc_auc``: 1 when the synthetic rows teach as much.
    """

    tstr_accuracy: float
    tstr_roc_auc: float
    trtr_accuracy: float
    trtr_roc_auc: float
    roc_auc_ratio: float


def binned(frame: pd.DataFrame, spec: ReleaseSpec, bins: int = 20) -> pd.DataFrame:
    """Every column as small integer codes (numeric: equal-width bins over the declared range; null: -1).

    Text and datetime columns are left out.
    """
    out: dict[str, np.ndarray] = {}
    for name, col in spec.columns.items():
        s = frame[name]
        if isinstance(col, IntegerColumn | FloatColumn):
            lo, hi = bounds_of(col)
            codes = np.floor((s.astype("Float64").to_numpy(dtype=float, na_value=np.nan) - lo)
                             / (hi - lo) * bins).clip(0, bins - 1)
            out[name] = np.where(np.isnan(codes), -1, codes).astype(int)
        elif isinstance(col, CategoricalColumn | BooleanColumn):
            out[name] = s.astype(object).where(s.notna(), "<null>").astype(str).to_numpy()
    return pd.DataFrame(out)


def _tvd(a: pd.Series | pd.DataFrame, b: pd.Series | pd.DataFrame) -> float:
    pa = a.value_counts(normalize=True)
    pb = b.value_counts(normalize=True)
    return float(0.5 * pa.sub(pb, fill_value=0).abs().sum())


def marginal_tvd(real: pd.DataFrame, synthetic: pd.DataFrame, spec: ReleaseSpec) -> dict[str, Any]:
    """Mean total variation distance of all 1-way and all 2-way marginals (non-text columns).

    Returns ``tvd_1way`` (mean over columns), ``tvd_2way`` (mean over pairs), ``tvd_2way_max`` and
    ``tvd_1way_by_column`` (rounded to 4 digits). Numbers are binned into 20 equal-width bins over their
    declared range.
    """
    r, s = binned(real, spec), binned(synthetic, spec)
    one = {c: _tvd(r[c], s[c]) for c in r.columns}
    two = [_tvd(r[[a, b]], s[[a, b]]) for a, b in itertools.combinations(r.columns, 2)]
    return {"tvd_1way": float(np.mean(list(one.values()))), "tvd_2way": float(np.mean(two)) if two else 0.0,
            "tvd_2way_max": float(np.max(two)) if two else 0.0,
            "tvd_1way_by_column": {c: round(v, 4) for c, v in one.items()}}


def pairwise_tvd(real: pd.DataFrame, synthetic: pd.DataFrame, spec: ReleaseSpec) -> dict[tuple[str, str], float]:
    """Total variation distance of each 2-way marginal (non-text, non-datetime columns, in spec order).

    The pairs and binning of :func:`marginal_tvd`, one figure per pair (its ``tvd_2way`` is their mean).
    """
    r, s = binned(real, spec), binned(synthetic, spec)
    return {(a, b): _tvd(r[[a, b]], s[[a, b]]) for a, b in itertools.combinations(r.columns, 2)}


def correlation_difference(real: pd.DataFrame, synthetic: pd.DataFrame, spec: ReleaseSpec) -> CorrelationDifference:
    """``|corr_real(a, b) - corr_synthetic(a, b)|`` over pairs of integer, float and boolean columns.

    Pearson correlations over the rows where both columns are present; an undefined correlation (a
    constant column, fewer than two rows) counts as 0. With fewer than two numeric columns there is no
    pair and both summaries are 0.
    """
    names = [n for n, c in spec.columns.items() if isinstance(c, IntegerColumn | FloatColumn | BooleanColumn)]

    def corr(frame: pd.DataFrame) -> pd.DataFrame:
        numeric = pd.DataFrame({n: frame[n].astype("Float64").astype(float) for n in names})
        return numeric.corr().fillna(0.0)

    cr, cs = corr(real), corr(synthetic)
    pairs = tuple((a, b, abs(float(cr.loc[a, b]) - float(cs.loc[a, b]))) for a, b in itertools.combinations(names, 2))
    diffs = [d for _, _, d in pairs]
    return CorrelationDifference(mean_abs=float(np.mean(diffs)) if diffs else 0.0,
                                 max_abs=float(np.max(diffs)) if diffs else 0.0, pairs=pairs)


def _features(frame: pd.DataFrame, target: str) -> tuple[pd.DataFrame, np.ndarray]:
    x = frame.drop(columns=[target]).copy()
    for c in x.columns:
        if x[c].dtype == "str" or str(x[c].dtype) in ("string", "object"):
            x[c] = x[c].astype("category")
        else:
            x[c] = x[c].astype("Float64")
    x = x.astype({c: "float64" for c in x.columns if str(x[c].dtype) == "Float64"})
    return x, frame[target].to_numpy()


def _aligned(train: pd.DataFrame, test: pd.DataFrame, target: str) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame,
                                                                          np.ndarray]:
    x_train, y_train = _features(train, target)
    x_test, y_test = _features(test, target)
    cats = list(x_train.select_dtypes("category").columns)
    for c in cats:  # the same category codes on both sides
        values = sorted(set(x_train[c].dropna().astype(str)) | set(x_test[c].dropna().astype(str)))
        x_train[c] = pd.Categorical(x_train[c].astype(object), categories=values)
        x_test[c] = pd.Categorical(x_test[c].astype(object), categories=values)
    return x_train, y_train, x_test, y_test


def predict_labels(train: pd.DataFrame, test: pd.DataFrame, *, target: str, fallback: object) -> np.ndarray:
    """Labels of ``test`` from a HistGradientBoosting classifier fitted on ``train`` (any number of classes).

    ``train`` without rows predicts ``fallback`` (a public constant); one class predicts that class. Null
    labels are a class of their own (the string ``<null>``).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    if len(test) == 0:
        return np.empty(0, dtype=object)
    if len(train) == 0:
        return np.full(len(test), fallback, dtype=object)
    x_train, y_train, x_test, _ = _aligned(train, test, target)
    labels = pd.Series(y_train, dtype=object).where(pd.notna(y_train), "<null>").astype(str).to_numpy()
    if len(set(labels)) < 2:
        return np.full(len(test), labels[0], dtype=object)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(x_train, labels)
    return np.asarray(model.predict(x_test), dtype=object)


def tstr(train: pd.DataFrame, test: pd.DataFrame, *, target: str, positive: object) -> dict[str, float]:
    """HistGradientBoosting fitted on ``train``, scored on ``test``: accuracy and ROC AUC.

    ``target`` is the label column and ``positive`` its positive class; the other columns are features
    (strings as categories). A single-class ``train`` predicts that class (ROC AUC 0.5).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score

    x_train, y_train, x_test, y_test = _aligned(train, test, target)
    y_train = (y_train == positive).astype(int)
    y_test = (y_test == positive).astype(int)
    if len(set(y_train)) < 2:
        return {"accuracy": float((y_test == y_train[0]).mean()), "roc_auc": 0.5}
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(x_train, y_train)
    proba = model.predict_proba(x_test)[:, 1]
    return {"accuracy": float(accuracy_score(y_test, proba >= 0.5)), "roc_auc": float(roc_auc_score(y_test, proba))}


def tstr_vs_trtr(*, synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, target: str,
                 positive: object) -> TstrComparison:
    """TSTR (fit on ``synthetic``) next to TRTR (fit on the real ``train``), both scored on real ``test``."""
    on_synthetic = tstr(synthetic, test, target=target, positive=positive)
    on_real = tstr(train, test, target=target, positive=positive)
    ratio = on_synthetic["roc_auc"] / on_real["roc_auc"] if on_real["roc_auc"] > 0 else 0.0
    return TstrComparison(tstr_accuracy=on_synthetic["accuracy"], tstr_roc_auc=on_synthetic["roc_auc"],
                          trtr_accuracy=on_real["accuracy"], trtr_roc_auc=on_real["roc_auc"], roc_auc_ratio=ratio)
