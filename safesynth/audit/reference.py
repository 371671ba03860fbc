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

import math
import string
from typing import Any

import numpy as np
import pandas as pd

from safesynth.schema import conform
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    ColumnSpec,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["NULL_RATE", "domain_sample", "draw_column"]

#: Share of nulls in each nullable column of the public reference.
NULL_RATE = 0.1
_LETTERS = np.array(list(string.ascii_lowercase))


def draw_column(col: ColumnSpec, m: int, rng: np.random.Generator) -> Any:
    """``m`` values drawn uniformly from ``col``'s declared domain (no nulls); shared with the canaries.

    Floats are rounded to the declared precision within the bounds; datetimes at the declared resolution;
    texts are random lowercase tokens within ``max_length``.

    Raises:
        ValueError: the column has no declared domain.
    """
    # Domains were checked as declared by the caller, so the `is not None` tests only narrow types.
    if isinstance(col, CategoricalColumn) and col.categories is not None:
        return np.asarray(col.categories, dtype=object)[rng.integers(0, len(col.categories), m)]
    if isinstance(col, BooleanColumn):
        return rng.random(m) < 0.5
    if isinstance(col, IntegerColumn) and col.min is not None and col.max is not None:
        return rng.integers(col.min, col.max, m, endpoint=True)
    if isinstance(col, FloatColumn) and col.min is not None and col.max is not None:
        x = rng.uniform(col.min, col.max, m)
        scale = 10.0**col.precision
        lo, hi = math.ceil(col.min * scale) / scale, math.floor(col.max * scale) / scale
        # A range narrower than one rounding step keeps unrounded values (rounding would leave it).
        return np.clip(np.round(x, col.precision), lo, hi) if lo <= hi else x
    if isinstance(col, DatetimeColumn):
        return _draw_datetimes(col, m, rng)
    if isinstance(col, TextColumn):
        return np.asarray([_token_text(col.max_length, rng) for _ in range(m)], dtype=object)
    raise ValueError(f"a `{col.type}` column has no declared domain")


def _draw_datetimes(col: DatetimeColumn, m: int, rng: np.random.Generator) -> np.ndarray:
    def micros(value: Any) -> int:
        stamp = pd.Timestamp(value)
        stamp = stamp.tz_convert(None) if stamp.tzinfo is not None else stamp  # as validation reads them
        return int(stamp.to_datetime64().astype("datetime64[us]").astype(np.int64))

    lo, hi = micros(col.min), micros(col.max)
    # The declared resolution; a coarser one than the bounds allow falls back to seconds, then microseconds.
    units = (86_400_000_000, 1_000_000, 1) if col.resolution == "day" else (1_000_000, 1)
    unit = next(u for u in units if -(-lo // u) <= hi // u)
    values = rng.integers(-(-lo // unit), hi // unit, m, endpoint=True) * unit
    return np.asarray(values, dtype="datetime64[us]")


def _token_text(max_length: int, rng: np.random.Generator) -> str:
    target = int(rng.integers(min(max_length, 8), min(max_length, 40), endpoint=True))
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < target:
        words.append("".join(rng.choice(_LETTERS, int(rng.integers(3, 9)))))
    return " ".join(words)[:target].strip()


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
        values = pd.Series(draw_column(col, rows, rng))
        if col.nullable:
            values = values.astype(object).where(rng.random(rows) >= NULL_RATE, None)
        out[name] = values
    return conform(pd.DataFrame(out), spec)
