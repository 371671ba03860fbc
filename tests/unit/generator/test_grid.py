"""The public grid: cells depend on the spec only, values map to the right cell, draws stay in bounds."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from safesynth.errors import InternalError
from safesynth.generator import grid
from safesynth.spec import CategoricalColumn, DatetimeColumn, FloatColumn, IntegerColumn


def test_small_integer_range_has_one_cell_per_value_and_a_large_one_bins():
    small = IntegerColumn(type="integer", min=0, max=3)
    large = IntegerColumn(type="integer", min=0, max=999)
    assert grid.int_edges(small, 20).tolist() == [0, 1, 2, 3, 4]
    assert grid.value_cells(small, 20) == 4
    assert grid.value_cells(large, 20) == 20
    edges = grid.int_edges(large, 20)
    assert edges[0] == 0 and edges[-1] == 1000  # [e_i, e_{i+1}) covers [min, max]


def test_cell_index_puts_values_in_their_cell_and_nulls_last():
    col = CategoricalColumn(type="categorical", categories=["a", "b", "c"], nullable=True)
    idx = grid.cell_index(pd.Series(["c", None, "a"], dtype="str"), col, bins=20)
    assert idx.tolist() == [2, 3, 0]
    ints = IntegerColumn(type="integer", min=0, max=999)
    assert grid.cell_index(pd.Series([0, 49, 50, 999], dtype="Int64"), ints, bins=20).tolist() == [0, 0, 1, 19]


def test_cell_index_refuses_a_value_outside_the_grid():
    col = IntegerColumn(type="integer", min=0, max=3)
    with pytest.raises(InternalError, match="outside the public grid"):
        grid.cell_index(pd.Series([7], dtype="Int64"), col, bins=20)


def test_finish_numeric_rounds_inside_the_bounds():
    col = FloatColumn(type="float", min=0.05, max=0.95, precision=1)
    lo, hi, _ = grid.numeric_view(col, pd.Series([], dtype="float64"))
    out = grid.finish_numeric(col, np.array([0.05, 0.5, 0.95]), lo, hi)
    assert out.tolist() == [0.1, 0.5, 0.9]


def test_datetime_draws_floor_to_the_day_within_the_range():
    col = DatetimeColumn(type="datetime", min=dt.datetime(2020, 1, 1, 12), max=dt.datetime(2020, 1, 3),
                         resolution="day")
    lo, hi, _ = grid.numeric_view(col, pd.Series([], dtype="datetime64[us]"))
    out = grid.finish_numeric(col, np.array([lo, hi]), lo, hi)
    assert out.tolist() == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]
