"""The in-memory and on-disk types of declared columns.

One convention everywhere (ingestion, generators, Parquet output): each declared column type maps to
one pandas dtype (nullable extension types, so a null is a null and never a sentinel value) and one
Arrow type.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

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

__all__ = ["arrow_schema", "arrow_type", "conform", "pandas_dtype"]


def pandas_dtype(col: ColumnSpec) -> str:
    if isinstance(col, IntegerColumn):
        return "Int64"
    if isinstance(col, FloatColumn):
        return "Float64"
    if isinstance(col, BooleanColumn):
        return "boolean"
    if isinstance(col, DatetimeColumn):
        return "datetime64[us]"
    if isinstance(col, CategoricalColumn | TextColumn):
        return "str"
    raise TypeError(f"unknown column spec {type(col).__name__}")


def arrow_type(col: ColumnSpec) -> pa.DataType:
    if isinstance(col, IntegerColumn):
        return pa.int64()
    if isinstance(col, FloatColumn):
        return pa.float64()
    if isinstance(col, BooleanColumn):
        return pa.bool_()
    if isinstance(col, DatetimeColumn):
        return pa.timestamp("us")
    if isinstance(col, CategoricalColumn | TextColumn):
        return pa.string()
    raise TypeError(f"unknown column spec {type(col).__name__}")


def arrow_schema(spec: ReleaseSpec) -> pa.Schema:
    """The Arrow schema of a release: declared names, in declared order, with declared nullability."""
    return pa.schema([pa.field(name, arrow_type(col), nullable=col.nullable) for name, col in spec.columns.items()])


def conform(frame: pd.DataFrame, spec: ReleaseSpec) -> pd.DataFrame:
    """Select the declared columns in declared order with their declared dtypes.

    Used on *generated* frames (whose values are valid by construction); ingestion does its own
    checked conversion so that a bad value is reported, not coerced.
    """
    out = {}
    for name, col in spec.columns.items():
        series = frame[name]
        dtype = pandas_dtype(col)
        if isinstance(col, DatetimeColumn):
            out[name] = pd.to_datetime(series).astype(dtype)
        else:
            out[name] = series.astype(dtype)
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))
