"""Small builders shared by tests (no private data: everything is made up here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safesynth.spec import ReleaseSpec, parse_spec

MIXED_COLUMNS: dict[str, Any] = {
    "age": {"type": "integer", "min": 17, "max": 90},
    "visits": {"type": "integer", "min": 0, "max": 3, "nullable": True},
    "spend": {"type": "float", "min": 0, "max": 500, "precision": 2},
    "plan": {"type": "categorical", "categories": ["basic", "plus", "pro"], "nullable": True},
    "active": {"type": "boolean"},
    "joined": {"type": "datetime", "min": "2020-01-01", "max": "2024-12-31", "nullable": True},
    "note": {"type": "text", "max_length": 40},
}


def make_spec(tmp_path: Path, **overrides: Any) -> ReleaseSpec:
    data: dict[str, Any] = {
        "dataset": "unit",
        "source": "data.csv",
        "columns": MIXED_COLUMNS,
        "privacy": {"epsilon": 2.0, "delta": 1e-6, "lifetime_epsilon": 20.0},
        "sampling": {"rows": 500, "seed": 0},
        "publish": {"target": "releases"},
    }
    for key, value in overrides.items():
        if key != "columns" and isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_spec(data, base_dir=tmp_path)


def mixed_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """A typed frame valid under MIXED_COLUMNS, with correlations and a few nulls."""
    rng = np.random.default_rng(seed)
    age = rng.integers(17, 91, n)
    plan = np.where(age > 50, rng.choice(["plus", "pro"], n), rng.choice(["basic", "plus"], n)).astype(object)
    plan[rng.random(n) < 0.05] = None
    joined = pd.Series(pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 1800, n), unit="D"))
    joined[rng.random(n) < 0.05] = pd.NaT
    visits = pd.array(rng.integers(0, 4, n), dtype="Int64")
    visits[rng.random(n) < 0.05] = pd.NA
    words = np.array(["good", "fit", "size", "love", "color", "ok"])
    return pd.DataFrame({
        "age": pd.array(age, dtype="Int64"),
        "visits": visits,
        "spend": pd.array(np.round(rng.uniform(0, 500, n), 2), dtype="Float64"),
        "plan": pd.Series(plan, dtype="str"),
        "active": pd.array(rng.random(n) < 0.4, dtype="boolean"),
        "joined": joined.astype("datetime64[us]"),
        "note": pd.Series([" ".join(rng.choice(words, 3)) for _ in range(n)], dtype="str"),
    })


def rows_valid(frame: pd.DataFrame, spec: ReleaseSpec) -> bool:
    """Every row satisfies the declared schema (names, order, nulls, bounds, categories, lengths)."""
    if list(frame.columns) != list(spec.columns):
        return False
    for name, col in spec.columns.items():
        s = frame[name]
        if not col.nullable and s.isna().any():
            return False
        v = s.dropna()
        kind = col.type
        if kind in ("integer", "float") and len(v) and (v.min() < col.min or v.max() > col.max):
            return False
        if kind == "categorical" and not set(v.astype(str)) <= set(col.categories):
            return False
        if kind == "text" and len(v) and v.astype(str).str.len().max() > col.max_length:
            return False
        if kind == "datetime" and len(v) and (v.min() < pd.Timestamp(col.min) or v.max() > pd.Timestamp(col.max)):
            return False
    return True


def as_sampled(frame, spec, path):
    """``frame`` as the sample stage's output: one part at ``path`` (for stages after sampling)."""
    import hashlib

    from safesynth.sampling.parts import Part, SampledRows, encode_part, write_bytes

    data = encode_part(frame, spec)
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # the sample stage's driver makes it
    write_bytes(str(path), data)
    return SampledRows((Part(shard=0, uri=str(path), rows=len(frame), size=len(data),
                             sha256=hashlib.sha256(data).hexdigest()),))
