"""The published gate's reference rows: drawn from the spec's declared domains, never from the data.

DOMIAS, Gen-LRA and the classifier attack compare the synthetic rows with *reference* rows from the
population. In the restricted report the reference is the attacker's share of the secret holdout (the
strongest setting). The published gate cannot use private reference rows: one reference row can change
every target's score, so the AUC would have no small sensitivity. There the reference is this public
sample instead: uniform over each column's declared domain (declared categories, numeric and datetime
bounds, text lengths), independent columns, nulls at a fixed rate on nullable columns. A target's score
then depends on that target, the synthetic rows and the spec alone, which is what the DP audit's
sensitivity argument needs (:mod:`safesynth.audit.membership`).

Against a uniform reference the density-ratio attacks become "how dense are the synthetic rows here",
which is what overfitting raises around a training row. The sample is seeded (it touches no record).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from safesynth.domains import bounds_of, categories_of
from safesynth.schema import conform
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["NULL_RATE", "domain_sample"]

#: Share of nulls in each nullable column of the public reference.
NULL_RATE = 0.1
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz     "))


def _column(col: object, n: int, rng: np.random.Generator) -> pd.Series:
    if isinstance(col, CategoricalColumn):
        categories = np.array(categories_of(col), dtype=object)
        return pd.Series(categories[rng.integers(0, len(categories), n)], dtype=object)
    if isinstance(col, BooleanColumn):
        return pd.Series(rng.random(n) < 0.5)
    if isinstance(col, IntegerColumn):
        lo, hi = bounds_of(col)
        return pd.Series(rng.integers(lo, hi, n, endpoint=True))
    if isinstance(col, FloatColumn):
        flo, fhi = bounds_of(col)
        return pd.Series(np.round(rng.uniform(flo, fhi, n), col.precision))
    if isinstance(col, DatetimeColumn):
        lo_s, hi_s = col.min.timestamp(), col.max.timestamp()
        values = pd.to_datetime(rng.uniform(lo_s, hi_s, n), unit="s")
        return pd.Series(values.floor("D") if col.resolution == "day" else values.floor("s"))
    if isinstance(col, TextColumn):
        lengths = rng.integers(1, min(col.max_length, 200), n, endpoint=True)
        return pd.Series(["".join(rng.choice(_LETTERS, k)) for k in lengths], dtype=object)
    raise TypeError(f"unknown column spec {type(col).__name__}")


def domain_sample(spec: ReleaseSpec, rows: int, *, seed: int = 0) -> pd.DataFrame:
    """``rows`` public reference rows, typed like the release (:func:`safesynth.schema.conform`).

    Args:
        spec: the resolved spec (every column has a domain).
        rows: how many rows (a public number).
        seed: the sample's seed; it touches no record, so a public seed is fine.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, col in spec.columns.items():
        values = _column(col, rows, rng)
        if col.nullable:
            values = values.astype(object).where(rng.random(rows) >= NULL_RATE, None)
        out[name] = values
    return conform(pd.DataFrame(out), spec)
