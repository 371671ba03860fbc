"""Record-local repair: what happens to a record that breaks its column's domain.

One rule set, used by validation (``validation.on_invalid: repair``, on the declared domains) and by
both generators (on the domains DP discovery resolved), so that one record never makes a release fail
after its budget was reserved:

* a number or datetime outside ``[min, max]`` is clamped to the nearer bound (a one-sided bound clamps
  its own side only);
* a text longer than ``max_length`` characters is truncated to ``max_length``: the clamp of a text's
  length (the llm tokenizer truncates the same way), which keeps the rest of the record intact;
* a value that did not parse as the declared type, or a category outside the domain, becomes null when
  the column is nullable; otherwise the record is dropped;
* a null in a non-nullable column drops the record.

Privacy:
    Every decision reads one record only, against a public domain (declared, or already released by
    DP discovery). The repaired table of a neighbouring input (one record added or removed) is
    therefore a neighbouring table: the same records, repaired the same way, plus or minus that one
    record (repaired or dropped). Every DP stage downstream keeps its guarantee. How many records were
    repaired is private: :class:`Repair` keeps the exact figures for the restricted reports directory
    only, and the published zone sees :func:`release_repair_count`'s noisy count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from safesynth.privacy.accountant import StageSpend
from safesynth.privacy.discovery import dp_row_count
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import StageBudget
from safesynth.spec import (
    RESERVED_COLUMN_PREFIX,
    CategoricalColumn,
    ColumnSpec,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["REPAIRED_COLUMN", "Repair", "naive_utc", "release_repair_count", "repair_records"]

#: Private bookkeeping column (work directory only): validation repaired or dropped this record.
REPAIRED_COLUMN = f"{RESERVED_COLUMN_PREFIX}_repaired"


@dataclass(frozen=True, slots=True, kw_only=True)
class Repair:
    """The repaired records and exact figures about them. The figures are private (restricted zone only).

    Attributes:
        frame: the kept records, repaired, with the declared columns in declared order and a fresh index.
        touched: one flag per input record: repaired or dropped (what :func:`release_repair_count` counts).
        kept: one flag per input record: not dropped.
        counts: exact number of records per ``(column, problem, action)``.
    """

    frame: pd.DataFrame
    touched: np.ndarray
    kept: np.ndarray
    counts: dict[tuple[str, str, str], int]

    @property
    def dropped(self) -> int:
        return int((~self.kept).sum())

    @property
    def repaired(self) -> int:
        """Records kept with at least one value changed."""
        return int((self.touched & self.kept).sum())

    def restricted(self) -> dict[str, Any]:
        """JSON-ready exact figures, for the restricted reports directory only."""
        return {
            "records_read": len(self.kept),
            "records_repaired": self.repaired,
            "records_dropped": self.dropped,
            "rules": [{"column": c, "problem": p, "action": a, "records": n}
                      for (c, p, a), n in self.counts.items()],
        }


def naive_utc(value: dt.datetime) -> dt.datetime:
    """A declared datetime as the naive UTC value that frames hold."""
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def repair_records(
    frame: pd.DataFrame, spec: ReleaseSpec, *, invalid: Mapping[str, pd.Series] | None = None
) -> Repair:
    """Repair every record of ``frame`` on its own against the spec's domains (see the module docstring).

    Args:
        frame: typed columns (:func:`safesynth.schema.pandas_dtype`); columns not declared are left out.
        spec: the spec whose domains apply: as declared (validation) or resolved by DP discovery
            (generators). A domain still undeclared (before discovery) is not checked.
        invalid: per column, the cells that did not parse as the declared type (already null in
            ``frame``); they are treated like a value outside the domain.

    Returns:
        The repaired records and exact figures about them (private: restricted zone only).
    """
    n = len(frame)
    invalid = invalid or {}
    drop = np.zeros(n, dtype=bool)
    touched = np.zeros(n, dtype=bool)
    counts: dict[tuple[str, str, str], int] = {}
    out: dict[str, pd.Series] = {}

    def note(column: str, problem: str, action: str, mask: np.ndarray) -> None:
        if mask.any():
            counts[(column, problem, action)] = int(mask.sum())

    for name, col in spec.columns.items():
        values = frame[name].reset_index(drop=True)
        unparsed = _mask(invalid.get(name), n)
        values, clamped, problem = _clamp(values, col)
        note(name, problem, "clamped" if not isinstance(col, TextColumn) else "truncated", clamped)
        outside = _outside(values, col)
        bad = unparsed | outside
        action = "set to null" if col.nullable else "record dropped"
        note(name, "values of the wrong type", action, unparsed)
        note(name, "values outside the domain", action, outside)
        if col.nullable:
            values = values.mask(pd.Series(bad, index=values.index))
        else:
            nulls = values.isna().to_numpy(dtype=bool) & ~bad
            note(name, "nulls in a non-nullable column", "record dropped", nulls)
            drop |= bad | nulls
        touched |= clamped | bad
        out[name] = values
    touched |= drop
    kept = ~drop
    repaired = pd.DataFrame(out, index=pd.RangeIndex(n))[kept].reset_index(drop=True)
    return Repair(frame=repaired, touched=touched, kept=kept, counts=counts)


def _mask(series: pd.Series | None, n: int) -> np.ndarray:
    if series is None:
        return np.zeros(n, dtype=bool)
    mask: np.ndarray = series.fillna(False).to_numpy(dtype=bool)
    return mask


def _bounds(col: ColumnSpec) -> tuple[Any, Any]:
    if isinstance(col, DatetimeColumn):
        return pd.Timestamp(naive_utc(col.min)), pd.Timestamp(naive_utc(col.max))
    if isinstance(col, IntegerColumn | FloatColumn):
        return col.min, col.max
    return None, None


def _clamp(values: pd.Series, col: ColumnSpec) -> tuple[pd.Series, np.ndarray, str]:
    """``(values, changed, problem)``: numbers and datetimes clamped to their bounds, texts truncated."""
    if isinstance(col, TextColumn):
        too_long = (values.str.len() > col.max_length).fillna(False).to_numpy(dtype=bool)
        if too_long.any():
            values = values.where(~too_long, values.str.slice(0, col.max_length))
        return values, too_long, f"texts longer than {col.max_length} characters"
    low, high = _bounds(col)
    changed = np.zeros(len(values), dtype=bool)
    if low is not None:
        changed |= (values < low).fillna(False).to_numpy(dtype=bool)
    if high is not None:
        changed |= (values > high).fillna(False).to_numpy(dtype=bool)
    if changed.any():
        values = values.clip(lower=low, upper=high)
    return values, changed, "values outside the bounds"


def _outside(values: pd.Series, col: ColumnSpec) -> np.ndarray:
    """Present values with no place in the domain: categories not in the (declared or discovered) set."""
    if isinstance(col, CategoricalColumn) and col.categories is not None:
        present = values.notna().to_numpy(dtype=bool)
        known = values.isin(col.categories).fillna(False).to_numpy(dtype=bool)
        outside: np.ndarray = present & ~known
        return outside
    return np.zeros(len(values), dtype=bool)


def release_repair_count(records: int, *, stage: StageBudget, noise: NoiseSource) -> tuple[int, StageSpend]:
    """The number of records repaired or dropped, with discrete Laplace noise, clamped at 0 (stage ``repairs``).

    Privacy:
        Pure ``stage.epsilon``-DP under add/remove one record. A record adds at most 1 to the count: it
        is counted once however many of its values were repaired, and whether validation, the
        generator's domain repair or both touched it (the caller passes the size of the union). So the
        count has L1 sensitivity 1, and discrete Laplace noise of scale ``1 / epsilon`` (OpenDP's exact
        sampler in a release; event ``DiscreteLaplaceDpEvent``) makes it epsilon-DP. The domains it is
        computed against are public or earlier DP outputs (adaptive composition). Clamping at 0 is
        post-processing.
    """
    noisy, spend = dp_row_count(records, epsilon=stage.epsilon, noise=noise, stage="repairs")
    detail = {"statistic": "records repaired or dropped", "sensitivity": 1, "scale": spend.detail["scale"],
              "noisy_count": noisy}
    return noisy, dataclasses.replace(spend, detail=detail)
