"""Numeric features for the attacks, from the declared domains only (never from the data's own range).

Every attack measures distances or densities in this space, so a record's features depend on that record
and the spec alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

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

__all__ = ["featurize"]


def featurize(frame: pd.DataFrame, spec: ReleaseSpec, *, columns: Sequence[str] | None = None) -> np.ndarray:
    """Numeric features on a common scale, from the declared domains only.

    Numbers and datetimes are scaled by their declared range to [0, 1]; categories are one-hot over the
    declared categories (each weighted 1/sqrt(2) so a mismatch costs 1, like a full-range numeric gap);
    texts contribute their length (scaled) and a 16-bucket hashed character profile; nulls get an
    indicator.

    Args:
        frame: typed rows with (at least) the spec's columns.
        spec: the resolved spec (declared domains).
        columns: only these columns, in the spec's order (default: all of the spec's columns).
    """
    wanted = set(spec.columns) if columns is None else set(columns)
    parts: list[np.ndarray] = []
    for name, col in spec.columns.items():
        if name not in wanted:
            continue
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
