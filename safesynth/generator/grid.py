"""Cells of a column on its public grid, shared by the generators that count records in cells.

The grid of a column is public: its domain comes from the spec (declared categories, bounds, precision,
resolution, ``max_length``) and the generator's ``bins``, never from the data, so the number of cells and
their edges reveal nothing about the records. A record adds one to exactly one cell of each column.

  * categorical: one cell per declared category; boolean: false, true;
  * integer: one cell per value when the range has at most ``bins`` values, else ``bins`` integer bins
    ``[e_i, e_{i+1})``;
  * float and datetime: ``bins`` equal-width bins of [min, max] (datetimes in seconds since the epoch);
  * text: ``bins`` equal-width bins of lengths in [0, max_length];
  * null: one more cell after the value cells, present only for nullable columns.

Mapping values to cells (:func:`cell_index`) reads the records and is the first step of a DP count; the
rest of this module (edges, drawing values back inside their cells) is post-processing of public figures.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from safesynth.domains import bounds_of, categories_of
from safesynth.errors import InternalError
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    ColumnSpec,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
    TextColumn,
)

__all__ = ["cell_index", "edges", "finish_numeric", "int_edges", "numeric_view", "value_cells"]


def edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """Edges of ``bins`` equal-width bins of [lo, hi] (``bins + 1`` values, both ends included)."""
    return np.linspace(lo, hi, bins + 1)


def int_edges(col: IntegerColumn, bins: int) -> np.ndarray:
    """Integer bin edges [e_i, e_{i+1}) covering [min, max]; one value per bin when the range is small."""
    lo, hi = bounds_of(col)
    width = hi - lo + 1
    if width <= bins:
        return np.arange(lo, hi + 2, dtype=np.int64)
    return np.unique(np.floor(np.linspace(lo, hi + 1, bins + 1)).astype(np.int64))


def value_cells(col: ColumnSpec, bins: int) -> int:
    """Number of cells of a column's value histogram (excluding the null cell)."""
    if isinstance(col, CategoricalColumn):
        return len(categories_of(col))
    if isinstance(col, BooleanColumn):
        return 2
    if isinstance(col, IntegerColumn):
        return len(int_edges(col, bins)) - 1
    return bins  # float, datetime, text lengths


def cell_index(series: pd.Series, col: ColumnSpec, bins: int) -> np.ndarray:
    """Cell of each value of ``series``; nulls go to the last cell (present only for nullable columns).

    The values must already lie in the column's domain (:func:`safesynth.repair.repair_records` runs
    first); one outside it is a bug and raises :class:`~safesynth.errors.InternalError`, without values.
    """
    n_cells = value_cells(col, bins)
    isnull = series.isna().to_numpy()
    idx = np.full(len(series), n_cells, dtype=np.int64)
    valid = ~isnull
    values = series[valid]
    if isinstance(col, CategoricalColumn):
        lookup = {c: i for i, c in enumerate(categories_of(col))}
        idx[valid] = values.astype(str).map(lookup).to_numpy(dtype=np.int64)
    elif isinstance(col, BooleanColumn):
        idx[valid] = values.astype(bool).to_numpy(dtype=np.int64)
    elif isinstance(col, IntegerColumn):
        idx[valid] = np.searchsorted(int_edges(col, bins), values.to_numpy(dtype=np.int64), side="right") - 1
    elif isinstance(col, TextColumn):
        lengths = values.astype(str).str.len().to_numpy(dtype=np.float64)
        idx[valid] = np.digitize(lengths, edges(0, col.max_length, bins)[1:-1])
    else:
        lo, hi, x = numeric_view(col, values)
        idx[valid] = np.digitize(x, edges(lo, hi, bins)[1:-1])
    if (idx[valid] < 0).any() or (idx[valid] >= n_cells).any():  # repair_records ran first: a bug
        raise InternalError("values outside the public grid reached the generator after repair")
    return idx


def numeric_view(col: FloatColumn | DatetimeColumn, values: pd.Series) -> tuple[float, float, np.ndarray]:
    """The column's bounds and ``values`` as floats: seconds since the epoch for datetimes.

    With an empty ``values`` it gives the public bounds alone, as the sampler uses it.
    """
    if isinstance(col, DatetimeColumn):
        secs = pd.to_datetime(values).astype("datetime64[us]").astype("int64").to_numpy() / 1e6
        return col.min.timestamp(), col.max.timestamp(), secs
    lo, hi = bounds_of(col)
    return lo, hi, values.to_numpy(dtype=np.float64)


def finish_numeric(col: FloatColumn | DatetimeColumn, x: np.ndarray, lo: float, hi: float) -> pd.Series:
    """Float draws ``x`` inside [lo, hi] as the column's values: rounded to its precision or resolution.

    Floats round to ``precision`` decimals and stay within the bounds; datetimes (``x`` in seconds) floor
    to the day or second and stay within [min, max].
    """
    if isinstance(col, FloatColumn):
        scale = 10.0**col.precision
        # Round inside the bounds: floor/ceil keep rounded values within [min, max].
        lo_r, hi_r = math.ceil(lo * scale) / scale, math.floor(hi * scale) / scale
        return pd.Series(np.clip(np.round(x, col.precision), lo_r, hi_r), dtype="Float64")
    unit = 86_400 if col.resolution == "day" else 1
    secs = np.floor(x / unit) * unit
    secs = np.clip(secs, math.ceil(lo / unit) * unit, hi)
    return pd.Series(pd.to_datetime(secs * 1e6, unit="us").astype("datetime64[us]"))


def decode_cells(col: ColumnSpec, cells: np.ndarray, bins: int, u: np.ndarray) -> pd.Series:
    """Values of ``cells`` (the last cell, ``value_cells(col, bins)``, is null): the category or boolean, or a
    value at position ``u`` (uniform on [0, 1), one per cell) inside its numeric cell.

    Post-processing: reads only the cells and the public grid. Text columns have no values on the grid.
    """
    n_cells = value_cells(col, bins)
    isnull = cells >= n_cells
    cells = np.minimum(cells, n_cells - 1)
    values: pd.Series
    if isinstance(col, CategoricalColumn):
        values = pd.Series(np.asarray(categories_of(col), dtype=object)[cells], dtype="str")
    elif isinstance(col, BooleanColumn):
        values = pd.Series(cells.astype(bool), dtype="boolean")
    elif isinstance(col, IntegerColumn):
        grid = int_edges(col, bins)
        lo, hi = grid[cells], grid[cells + 1]
        values = pd.Series(lo + np.floor(u * (hi - lo)).astype(np.int64), dtype="Int64")
    elif isinstance(col, FloatColumn | DatetimeColumn):
        lo_b, hi_b, _ = numeric_view(col, pd.Series([], dtype="float64"))
        grid = edges(lo_b, hi_b, bins)
        values = finish_numeric(col, grid[cells] + u * (grid[cells + 1] - grid[cells]), lo_b, hi_b)
    else:
        raise InternalError(f"a {col.type} column has no values on the grid")
    values = values.astype(values.dtype)
    values[isnull] = pd.NaT if isinstance(col, DatetimeColumn) else pd.NA
    return values
