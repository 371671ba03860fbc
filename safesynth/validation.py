"""Validating the source against the declared columns, with Great Expectations as the rule engine.

How the checks are split:

* **Types** are checked by parsing each column here (vectorised pandas), because GX's type
  expectations look at dtypes, not at what text parses as (and pandas 3 changed those dtypes). A value
  that does not parse as the declared type is counted under the column's *type* rule.
* **Everything else** is a GX expectation, evaluated in one run over the parsed frame: the column set
  (``ExpectTableColumnsToMatchSet``), no nulls in non-nullable columns, min/max of numbers and
  datetimes, category sets, text lengths. Each bad cell is counted once: before GX runs, cells that
  failed to parse are replaced with an in-domain placeholder, so they are neither nulls nor range
  failures. An ``exception_info`` from GX is a hard failure ("could not be checked").

GX is asked for counts only (``SUMMARY`` with ``partial_unexpected_count: 0``): no failing values
are requested, and none reach a message. Messages name columns and rules, never values or counts.

What happens to a record that breaks a rule is the spec's ``validation.on_invalid``:

* ``repair`` (default): the record is repaired or dropped on its own (:mod:`safesynth.repair`: numbers
  and datetimes clamped, texts truncated, unparseable values and unknown categories nulled or the
  record dropped, nulls in non-nullable columns dropped), and GX then checks the repaired frame (a rule
  failing after repair is a bug: :class:`~safesynth.errors.InternalError`). Whether a release goes on
  never depends on single records.
* ``fail``: any failing rule stops the release with a :class:`~safesynth.errors.SchemaValidationError`
  naming the failing rules. That a release failed depends on single records: it is outside the DP
  guarantee, and so documented.

Either way, exact figures (failing rows per rule, records repaired or dropped) are private: they go to
the restricted reports directory only (:attr:`Validated.repair`, the error's ``restricted`` mapping).
Schema-level problems (a declared column missing or repeated, a column the parser or GX cannot check)
always fail.

What parses as what (values are stripped of surrounding whitespace for the numeric, boolean and
datetime types; categories and texts are compared exactly as written):

* null: a missing value. In CSV only an empty cell is null; ``NA``, ``null``, ``?`` are ordinary
  strings (they can be legitimate categories). In JSON Lines ``null`` or a missing key; in Parquet a
  null.
* integer: an optional sign and up to 18 digits, or a number with no fractional part (``"3.0"`` and
  ``"1e3"`` are accepted as 3 and 1000: exports of nullable integer columns often write floats) up to
  2**53 in magnitude; ``"3.5"``, ``"nan"``, ``"inf"`` and JSON ``true`` are not integers.
* float: any finite number pandas parses (``"1e-3"``, ``" 2.5 "``); ``"nan"`` and ``"inf"`` are not.
* boolean: ``true/false``, ``1/0``, ``yes/no`` in any case (JSON/Parquet booleans, 0 and 1 too).
* datetime: ISO 8601 (``2024-05-01``, ``2024-05-01T13:45:00``, ``2024-05-01 13:45:00.123``, an offset
  or ``Z``); values with an offset are converted to UTC and stored naive, naive values are taken as
  they are. Parquet timestamps are used as they are (time zone converted to naive UTC).
* categorical and text: strings; JSON/Parquet numbers and booleans are turned into their text
  (``3``, ``2.5``, ``true``); lists and objects are not strings.

On success the frame comes back with the declared dtypes (:func:`safesynth.schema.pandas_dtype`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from safesynth.errors import InternalError, SchemaValidationError
from safesynth.repair import Repair, naive_utc, repair_records
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

__all__ = ["Validated", "ValidationSummary", "parse_column", "validate_frame"]

_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_MAX_EXACT_FLOAT_INT = 2.0**53
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0}


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationSummary:
    """What was checked, for the release manifest: spec constants only, nothing computed from the data.

    Attributes:
        suite: name of the generated expectation suite.
        on_invalid: the spec's policy for records that break a rule (``repair`` or ``fail``).
        evaluated: checks evaluated (GX expectations plus the per-column type checks).
        rules: one line per check, e.g. "column `age`: values within [17, 90]".
        gx_version: the Great Expectations version that evaluated the expectations.
    """

    suite: str
    on_invalid: str
    evaluated: int
    rules: tuple[str, ...]
    gx_version: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; no row, null, failure or repair counts (those would describe the private data)."""
        return {
            "engine": "great_expectations",
            "gx_version": self.gx_version,
            "suite": self.suite,
            "on_invalid": self.on_invalid,
            "evaluated": self.evaluated,
            "rules": list(self.rules),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Validated:
    """What validation hands on.

    Attributes:
        frame: the declared columns in declared order with declared dtypes (repaired records, kept ones).
        summary: the public summary (spec constants only).
        repair: which records were repaired or dropped, with exact figures: private, restricted zone only.
    """

    frame: pd.DataFrame
    summary: ValidationSummary
    repair: Repair


@dataclass(frozen=True, slots=True, kw_only=True)
class _Check:
    """One rule: how it reads when it holds and when it fails, and the GX expectation (if any)."""

    column: str
    holds: str
    fails: str
    expectation: str | None = None  # class name in great_expectations.expectations
    kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- public API


def validate_frame(raw: pd.DataFrame, spec: ReleaseSpec, *, source_name: str) -> Validated:
    """Check ``raw`` (as read by :func:`safesynth.io.read_source`) against the declared columns.

    Records that break a rule are repaired or dropped, or fail the validation, as the spec's
    ``validation.on_invalid`` says (see the module docstring).

    Args:
        raw: the source's columns as read (extra columns are ignored).
        spec: the release spec whose ``columns`` are the rules.
        source_name: display name of the source for messages (no credentials).

    Returns:
        The typed (and repaired) frame, a public summary and the private repair figures.

    Raises:
        SchemaValidationError: a schema-level problem, or (``on_invalid: fail``) failing rules; one
            ``(column, rule)`` per problem, exact row counts only in its ``restricted`` mapping.
    """
    _check_presence(raw, spec, source_name)
    typed: dict[str, pd.Series] = {}
    unparsed: dict[str, pd.Series] = {}
    checks: list[_Check] = [
        _Check(column="", holds="table: columns match the declared set", fails="",
               expectation="ExpectTableColumnsToMatchSet",
               kwargs={"column_set": list(spec.columns), "exact_match": True})
    ]
    for name, col in spec.columns.items():
        try:
            values, bad = parse_column(raw[name], col)
        except Exception as exc:
            # Parser errors can quote the offending value (pyarrow does): keep only the class.
            failure = (name, f"could not be parsed ({type(exc).__name__})")
            raise SchemaValidationError([failure], source=source_name) from None
        checks.append(_type_check(name, col))
        checks.extend(_value_checks(name, col))
        typed[name], unparsed[name] = values, bad
    frame = pd.DataFrame(typed, index=pd.RangeIndex(len(raw)))
    gx_checks = [check for check in checks if check.expectation]
    if spec.validation.on_invalid == "repair":
        repair = repair_records(frame, spec, invalid=unparsed)
        failures, gx_version = _run_expectations(repair.frame, gx_checks, suite=_suite_name(spec))
        _check_repaired(failures, source_name)
    else:
        failures, gx_version = _run_expectations(_with_placeholders(frame, unparsed, spec), gx_checks,
                                                 suite=_suite_name(spec))
        by_column: dict[str, list[tuple[str, str, int | None]]] = {name: [] for name in spec.columns}
        for entry in _type_failures(checks, unparsed) + failures:  # per column: its type rule first
            by_column.setdefault(entry[0], []).append(entry)
        failures = [entry for entries in by_column.values() for entry in entries]
        if failures:
            raise SchemaValidationError(
                [(column, rule) for column, rule, _ in failures], source=source_name,
                restricted={"records_read": len(frame),
                            "rules": [{"column": c, "rule": r, "records": n} for c, r, n in failures]},
            )
        repair = repair_records(frame, spec)  # nothing to repair: every rule held
    summary = ValidationSummary(
        suite=_suite_name(spec), on_invalid=spec.validation.on_invalid, evaluated=len(checks),
        rules=tuple(c.holds for c in checks), gx_version=gx_version,
    )
    return Validated(frame=repair.frame, summary=summary, repair=repair)


def _type_failures(checks: list[_Check], unparsed: dict[str, pd.Series]) -> list[tuple[str, str, int | None]]:
    """``(column, rule, rows)`` for the cells that did not parse, in declared order."""
    out: list[tuple[str, str, int | None]] = []
    for check in checks:
        if check.expectation is None and int(unparsed[check.column].sum()):
            out.append((check.column, check.fails, int(unparsed[check.column].sum())))
    return out


def _with_placeholders(frame: pd.DataFrame, unparsed: dict[str, pd.Series], spec: ReleaseSpec) -> pd.DataFrame:
    """Cells that failed to parse (counted under the type rule) replaced by an in-domain placeholder."""
    return pd.DataFrame({name: frame[name].mask(unparsed[name], _placeholder(col)) if unparsed[name].any()
                         else frame[name] for name, col in spec.columns.items()}, index=frame.index)


def _check_repaired(failures: list[tuple[str, str, int | None]], source_name: str) -> None:
    """After repair only a GX error may remain (a hard failure); a failing rule is a bug in the repair."""
    counted = [(column, rule) for column, rule, count in failures if count is not None]
    if counted:
        raise InternalError(f"rules still fail after repairing the records: {counted}")
    if failures:
        raise SchemaValidationError([(column, rule) for column, rule, _ in failures], source=source_name)


def parse_column(raw: pd.Series, col: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    """Parse one column as its declared type (see the module docstring for what parses as what).

    Returns:
        ``(values, bad)``: values with the declared dtype (null where raw is null or does not parse)
        and a boolean mask of the non-null raw cells that did not parse.
    """
    raw = raw.reset_index(drop=True)
    if isinstance(col, IntegerColumn):
        return _parse_integer(raw)
    if isinstance(col, FloatColumn):
        return _parse_float(raw)
    if isinstance(col, BooleanColumn):
        return _parse_boolean(raw)
    if isinstance(col, DatetimeColumn):
        return _parse_datetime(raw)
    text, bad = _as_text(raw)
    return text, bad


# ------------------------------------------------------------------------------------------ checks


def _suite_name(spec: ReleaseSpec) -> str:
    return f"safesynth.{spec.dataset}.schema"


def _check_presence(raw: pd.DataFrame, spec: ReleaseSpec, source_name: str) -> None:
    # Other rules cannot run on a missing column; report these alone (names come from the spec).
    counts = pd.Index(raw.columns).value_counts()
    problems: list[tuple[str, str]] = []
    for name in spec.columns:
        if name not in counts.index:
            problems.append((name, "is missing"))
        elif counts[name] > 1:
            problems.append((name, "appears more than once"))
    if problems:
        raise SchemaValidationError(problems, source=source_name)


def _type_check(name: str, col: ColumnSpec) -> _Check:
    what = {
        IntegerColumn: ("integers", "values are not integers"),
        FloatColumn: ("finite numbers", "values are not finite numbers"),
        BooleanColumn: ("booleans", "values are not booleans (true/false, 1/0, yes/no)"),
        DatetimeColumn: ("ISO 8601 datetimes", "values are not ISO 8601 datetimes"),
    }.get(type(col), ("strings", "values are not strings"))
    return _Check(column=name, holds=f"column `{name}`: values are {what[0]}", fails=what[1])


def _value_checks(name: str, col: ColumnSpec) -> list[_Check]:
    out: list[_Check] = []
    if not col.nullable:
        out.append(_Check(column=name, holds=f"column `{name}`: no nulls",
                          fails="nulls in a non-nullable column",
                          expectation="ExpectColumnValuesToNotBeNull", kwargs={"column": name}))
    low, high = _bounds(col)
    if low is not None or high is not None:
        out.append(_Check(column=name, holds=f"column `{name}`: values {_range_text(low, high, within=True)}",
                          fails=f"values {_range_text(low, high, within=False)}",
                          expectation="ExpectColumnValuesToBeBetween",
                          kwargs={"column": name, "min_value": low, "max_value": high}))
    if isinstance(col, CategoricalColumn) and col.categories is not None:
        count = len(col.categories)
        out.append(_Check(column=name, holds=f"column `{name}`: values in the {count} declared categories",
                          fails="values not in the declared categories",
                          expectation="ExpectColumnValuesToBeInSet",
                          kwargs={"column": name, "value_set": list(col.categories)}))
    if isinstance(col, TextColumn):
        out.append(_Check(column=name, holds=f"column `{name}`: texts at most {col.max_length} characters",
                          fails=f"texts longer than {col.max_length} characters",
                          expectation="ExpectColumnValueLengthsToBeBetween",
                          kwargs={"column": name, "max_value": col.max_length}))
    return out


def _bounds(col: ColumnSpec) -> tuple[Any, Any]:
    """Declared ``(min, max)`` of numbers and datetimes (naive UTC); ``(None, None)`` for other types."""
    if isinstance(col, DatetimeColumn):
        return naive_utc(col.min), naive_utc(col.max)
    if isinstance(col, IntegerColumn | FloatColumn):
        return col.min, col.max
    return None, None


def _show(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range_text(low: Any, high: Any, *, within: bool) -> str:
    if low is not None and high is not None:
        return f"{'within' if within else 'outside'} [{_show(low)}, {_show(high)}]"
    if low is not None:
        return f"{'at least' if within else 'below'} {_show(low)}"
    return f"{'at most' if within else 'above'} {_show(high)}"


def _placeholder(col: ColumnSpec) -> Any:
    """An in-domain value standing in for a cell that failed to parse (already counted once)."""
    if isinstance(col, DatetimeColumn):
        return pd.Timestamp(naive_utc(col.min))
    if isinstance(col, IntegerColumn | FloatColumn):
        return next((b for b in (col.min, col.max) if b is not None), 0)
    if isinstance(col, BooleanColumn):
        return False
    if isinstance(col, CategoricalColumn) and col.categories:
        return col.categories[0]
    return ""


# ------------------------------------------------------------------------------------------ parsing


def _scalar_text(value: Any) -> str | None:
    """Text of a JSON/Parquet scalar; ``None`` for values that are not scalars (lists, objects, bytes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, dt.date | pd.Timestamp):
        return value.isoformat()
    return None


def _as_text(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``(text, bad)``: a ``str`` series (null where raw is null or not a scalar) and the non-scalars."""
    present = raw.notna()
    if isinstance(raw.dtype, pd.StringDtype):
        return raw.astype("str"), pd.Series(False, index=raw.index)
    mapped = raw[present].map(_scalar_text)
    bad = pd.Series(False, index=raw.index)
    bad[mapped.index[mapped.isna()]] = True
    text = pd.Series(pd.NA, index=raw.index, dtype="object")
    text[present] = mapped
    return text.astype("str"), bad


def _parse_integer(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    present = raw.notna()
    if pd.api.types.is_unsigned_integer_dtype(raw.dtype):
        too_big = (raw > np.iinfo(np.int64).max).fillna(False).astype(bool)
        return raw.where(~too_big).astype("Int64"), too_big
    if pd.api.types.is_integer_dtype(raw.dtype):
        return raw.astype("Int64"), pd.Series(False, index=raw.index)
    if pd.api.types.is_float_dtype(raw.dtype):
        numbers, exact = raw.astype("float64"), pd.Series(False, index=raw.index)
        out = pd.Series(pd.NA, index=raw.index, dtype="Int64")
    else:
        text, _ = _as_text(raw)
        text = text.str.strip()
        exact = text.str.fullmatch(r"[+-]?[0-9]{1,18}", na=False)  # ASCII digits only
        out = pd.Series(pd.NA, index=raw.index, dtype="Int64")
        out[exact] = text[exact].str.removeprefix("+").astype("Int64")
        numbers = pd.to_numeric(text.where(~exact).astype("object"), errors="coerce").astype("float64")
    integral = (~exact & np.isfinite(numbers) & (numbers == np.floor(numbers))
                & (numbers.abs() <= _MAX_EXACT_FLOAT_INT))
    out[integral] = numbers[integral].astype("int64")
    return out, present & out.isna()


def _parse_float(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    present = raw.notna()
    if pd.api.types.is_bool_dtype(raw.dtype):
        return pd.Series(pd.NA, index=raw.index, dtype="Float64"), present
    if pd.api.types.is_numeric_dtype(raw.dtype):
        numbers = raw.astype("float64")
    else:
        text, _ = _as_text(raw)
        numbers = pd.to_numeric(text.str.strip().astype("object"), errors="coerce").astype("float64")
    out = numbers.where(np.isfinite(numbers)).astype("Float64")
    return out, present & out.isna()


def _parse_boolean(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    present = raw.notna()
    if pd.api.types.is_bool_dtype(raw.dtype):
        return raw.astype("boolean"), pd.Series(False, index=raw.index)
    text, _ = _as_text(raw)
    if pd.api.types.is_numeric_dtype(raw.dtype):
        text = text.str.removesuffix(".0")  # 1.0 / 0.0 from a float column
    out = text.str.strip().str.lower().map(_BOOLEANS).astype("boolean")
    return out, present & out.isna()


def _parse_datetime(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    present = raw.notna()
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        values = raw.dt.tz_convert(None) if getattr(raw.dtype, "tz", None) is not None else raw
        return values.astype("datetime64[us]"), pd.Series(False, index=raw.index)
    text, _ = _as_text(raw)
    if not isinstance(raw.dtype, pd.StringDtype):  # epoch numbers are not ISO 8601
        text = text.mask(raw.map(lambda v: isinstance(v, int | float | np.number)).astype(bool))
    text = text.str.strip()
    # pandas' ISO 8601 parser also takes "2020" or "-0" as years; require at least year and month.
    text = text.where(text.str.match(r"[0-9]{4}-?[0-9]{2}", na=False))
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    out = parsed.dt.tz_convert(None).astype("datetime64[us]")
    return out, present & out.isna()


# ---------------------------------------------------------------------------------------------- GX


def _run_expectations(
    frame: pd.DataFrame, checks: list[_Check], *, suite: str
) -> tuple[list[tuple[str, str, int | None]], str]:
    """Evaluate ``checks`` with GX in one run over ``frame``; return ``(failures, gx_version)``."""
    import great_expectations as gx  # slow (several seconds): import only when validating
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")  # fresh per run: GX names are unique per context
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas(name="safesynth")
             .add_dataframe_asset(name="source")
             .add_batch_definition_whole_dataframe(name="whole"))
    expectation_suite = context.suites.add(gx.ExpectationSuite(name=suite))
    for index, check in enumerate(checks):
        expectation_cls = getattr(gxe, check.expectation or "")
        expectation_suite.add_expectation(expectation_cls(**check.kwargs, meta={"check": index}))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite}.validation", data=batch, suite=expectation_suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=_RESULT_FORMAT)
    return _read_results(result.results, checks), str(gx.__version__)


def _read_results(results: list[Any], checks: list[_Check]) -> list[tuple[str, str, int | None]]:
    """Failures per check, from counts only; a GX error or a check without a result fails hard."""
    failures: list[tuple[str, str, int | None]] = []
    seen: set[int] = set()
    for outcome in results:
        config = outcome.expectation_config
        index = int(config.meta["check"]) if config is not None and "check" in (config.meta or {}) else -1
        if not 0 <= index < len(checks):
            failures.append(("*", "could not be checked (GX returned an unknown expectation)", None))
            continue
        seen.add(index)
        check = checks[index]
        column = check.column or "*"
        if _raised(outcome.exception_info):
            failures.append((column, f"could not be checked ({check.holds.split(': ', 1)[-1]})", None))
        elif not outcome.success:
            count = (outcome.result or {}).get("unexpected_count")
            failures.append((column, check.fails or "columns do not match the declared set",
                             None if count is None else int(count)))
    for index in sorted(set(range(len(checks))) - seen):
        check = checks[index]
        failures.append((check.column or "*", f"was not checked ({check.holds.split(': ', 1)[-1]})", None))
    return failures


def _raised(info: Any) -> bool:
    # Either {"raised_exception": bool, ...} or {metric_id: {"raised_exception": bool, ...}, ...}.
    if not isinstance(info, dict):
        return False
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(_raised(value) for value in info.values())
