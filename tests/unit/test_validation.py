"""Validation with Great Expectations: rules, never values or counts; repair or fail per the spec."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safesynth import validation
from safesynth.errors import InternalError, SchemaValidationError
from safesynth.io import read_source, source_display
from safesynth.repair import repair_records
from safesynth.schema import pandas_dtype
from safesynth.spec import ReleaseSpec, load_spec, parse_spec
from safesynth.validation import ValidationSummary, _Check, _run_expectations, parse_column, validate_frame

DATA = Path(__file__).resolve().parents[2] / "data"
ADULT_CSV = DATA.parents[1] / "shared" / "data" / "adult.csv"
SECRET = "SECRET_9137"
SECRET_NUMBER = "9137"  # planted in numeric columns; never in a message

COLUMNS = {
    "age": {"type": "integer", "min": 17, "max": 90},
    "score": {"type": "float", "min": 0.0, "max": 1.0, "nullable": True},
    "member": {"type": "boolean"},
    "joined": {"type": "datetime", "min": "2020-01-01T00:00:00", "max": "2024-12-31T00:00:00"},
    "city": {"type": "categorical", "categories": ["Oslo", "Lima", "NA"]},
    "comment": {"type": "text", "max_length": 20, "nullable": True},
}
GOOD = {"age": "40", "score": "0.5", "member": "true", "joined": "2022-03-04", "city": "Oslo",
        "comment": "fine"}


def make_spec(
    columns: dict | None = None, tmp_path: Path | None = None, source: str = "s.csv", on_invalid: str = "fail"
) -> ReleaseSpec:
    data = {
        "validation": {"on_invalid": on_invalid},
        "dataset": "t",
        "source": source,
        "columns": columns or COLUMNS,
        # Some tests declare one-sided bounds, which the spec only allows with a discovery budget.
        "privacy": {"epsilon": 1.0, "lifetime_epsilon": 10.0, "allocation": {"discovery": 0.1}},
        "sampling": {"rows": 10},
        "publish": {"target": "releases"},
    }
    return parse_spec(data, base_dir=tmp_path or Path("."))


def frame_of(*rows: dict, good_rows: int = 3) -> pd.DataFrame:
    """A frame as the CSV reader returns it: str columns, None for empty cells."""
    records = [GOOD] * good_rows + [{**GOOD, **row} for row in rows]
    return pd.DataFrame({name: pd.Series([r[name] for r in records], dtype="str") for name in GOOD})


def failures_of(raw: pd.DataFrame, columns: dict | None = None, on_invalid: str = "fail") -> tuple[list, str]:
    """``(failures, message)`` of a failed validation; failures are ``(column, rule, exact rows)``.

    The exact counts come from the error's restricted mapping; the message must hold none of them.
    """
    with pytest.raises(SchemaValidationError) as info:
        validate_frame(raw, make_spec(columns, on_invalid=on_invalid), source_name="data/s.csv")
    message = str(info.value)
    assert message.startswith("data/s.csv does not match the spec: ")
    assert "\n" not in message
    assert SECRET not in message and SECRET_NUMBER not in message
    assert " row" not in message  # no "2 rows fail": counts of private rows are restricted
    exact = {(r["column"], r["rule"]): r["records"] for r in (info.value.restricted or {}).get("rules", [])}
    return [(column, rule, exact.get((column, rule))) for column, rule in info.value.failures], message


# ------------------------------------------------------------------------------------ clean inputs


def test_valid_frame_comes_back_with_declared_dtypes():
    checked = validate_frame(frame_of(), make_spec(), source_name="s.csv")
    frame, summary = checked.frame, checked.summary
    spec = make_spec()
    assert list(frame.columns) == list(spec.columns)
    for name, col in spec.columns.items():
        assert str(frame[name].dtype) == str(pd.Series([], dtype=pandas_dtype(col)).dtype), name
    assert frame["age"].tolist() == [40, 40, 40]
    assert frame["joined"].iloc[0] == pd.Timestamp("2022-03-04")
    assert summary.evaluated == len(summary.rules)
    assert "column `age`: values within [17, 90]" in summary.rules
    assert checked.repair.touched.sum() == 0 and checked.repair.kept.all()


def test_summary_for_the_manifest_holds_no_counts_of_private_data():
    raw = frame_of(good_rows=37)
    summary = validate_frame(raw, make_spec(), source_name="s.csv").summary
    payload = summary.to_dict()
    assert set(payload) == {"engine", "gx_version", "suite", "on_invalid", "evaluated", "rules"}
    text = json.dumps(payload)
    assert "37" not in text and "element_count" not in text
    again = validate_frame(frame_of(good_rows=5), make_spec(), source_name="s.csv").summary
    assert again.to_dict() == payload  # a function of the spec only
    repaired = validate_frame(frame_of({"age": "200"}, {"city": SECRET}, good_rows=37),
                              make_spec(on_invalid="repair"), source_name="s.csv").summary
    assert repaired.to_dict() == {**payload, "on_invalid": "repair"}  # repairs leave no trace here
    with pytest.raises(AttributeError):
        summary.evaluated = 0  # type: ignore[misc]
    assert isinstance(summary, ValidationSummary)


def test_demo_csv_validates_against_its_spec():
    spec = load_spec(DATA / "demo.yaml")
    checked = validate_frame(read_source(spec), spec, source_name=source_display(spec))
    frame = checked.frame
    assert len(frame.columns) == 14 and checked.summary.suite == "safesynth.demo.schema"
    assert checked.repair.touched.sum() == 0  # the demo data breaks no rule
    assert frame["note"].isna().any() and frame["insurance"].isna().any()


def test_demo_generator_is_deterministic_and_matches_the_spec_it_writes(tmp_path):
    module_spec = importlib.util.spec_from_file_location("make_demo", DATA / "make_demo.py")
    make_demo = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(make_demo)
    csv_path, spec_path = make_demo.write_demo(tmp_path / "a", rows=300, seed=11)
    again, _ = make_demo.write_demo(tmp_path / "b", rows=300, seed=11)
    assert csv_path.read_bytes() == again.read_bytes()
    spec = load_spec(spec_path)
    frame = validate_frame(read_source(spec), spec, source_name=source_display(spec)).frame
    assert len(frame) == 300


@pytest.mark.skipif(not ADULT_CSV.exists(), reason="shared adult.csv not available")
def test_adult_csv_validates_against_its_spec():
    # Speed is a benchmark's business (bench/), never a timed test.
    spec = load_spec(DATA / "adult.yaml")
    checked = validate_frame(read_source(spec), spec, source_name=source_display(spec))
    frame = checked.frame
    assert len(frame.columns) == 15
    assert str(frame["fnlwgt"].dtype) == "Int64"
    assert frame["occupation"].isna().any()  # documented missing values, declared nullable
    assert checked.summary.evaluated == len(checked.summary.rules)


# ----------------------------------------------------------------------------------- bad values


def test_out_of_range_values_fail_naming_the_rule_without_counts():
    failures, message = failures_of(frame_of({"age": SECRET_NUMBER}, {"age": "16"}))
    assert failures == [("age", "values outside [17, 90]", 2)]  # the exact count is restricted
    assert message.endswith("column `age` values outside [17, 90]")


def test_wrong_types_are_counted_once_under_the_type_rule():
    failures, message = failures_of(frame_of({"age": SECRET}, {"age": "3.5"}, {"member": SECRET},
                                             {"joined": SECRET}, {"score": "nan"}))
    assert failures == [
        ("age", "values are not integers", 2),
        ("score", "values are not finite numbers", 1),
        ("member", "values are not booleans (true/false, 1/0, yes/no)", 1),
        ("joined", "values are not ISO 8601 datetimes", 1),
    ]  # no extra null or range failure for the same cells
    assert "column `age` values are not integers;" in message


def test_nulls_in_non_nullable_column_are_counted():
    failures, message = failures_of(frame_of({"city": None}, {"city": None, "score": None}))
    assert failures == [("city", "nulls in a non-nullable column", 2)]
    assert message.endswith("column `city` nulls in a non-nullable column")


def test_unknown_category_is_counted_not_named():
    failures, message = failures_of(frame_of({"city": SECRET}, {"city": "oslo"}))
    assert failures == [("city", "values not in the declared categories", 2)]


def test_too_long_text_is_counted_not_shown():
    failures, message = failures_of(frame_of({"comment": SECRET * 3}))
    assert failures == [("comment", "texts longer than 20 characters", 1)]
    assert message.endswith("column `comment` texts longer than 20 characters")


def test_datetime_outside_bounds_names_the_declared_bounds():
    failures, _ = failures_of(frame_of({"joined": "2019-12-31T23:59:59"}))
    assert failures == [("joined", "values outside [2020-01-01, 2024-12-31]", 1)]


def test_every_failing_rule_is_reported_at_once():
    failures, _ = failures_of(frame_of({"age": "200", "city": SECRET, "comment": SECRET * 3, "member": None}))
    assert [(column, count) for column, _, count in failures] == [
        ("age", 1), ("member", 1), ("city", 1), ("comment", 1)]


def test_missing_declared_column_is_reported_without_running_rules():
    failures, message = failures_of(frame_of().drop(columns=["city", "age"]))
    assert failures == [("age", "is missing", None), ("city", "is missing", None)]
    assert message.endswith("column `age` is missing; column `city` is missing")


def test_one_sided_bounds_read_naturally():
    columns = {"n": {"type": "integer", "min": 0}, "x": {"type": "float", "max": 2.5}}
    raw = pd.DataFrame({"n": pd.Series(["-1", "5"], dtype="str"), "x": pd.Series(["3", "1"], dtype="str")})
    failures, _ = failures_of(raw, columns)
    assert failures == [("n", "values below 0", 1), ("x", "values above 2.5", 1)]


def test_parser_crash_is_reported_without_its_message(monkeypatch):
    def crash(raw, col):
        raise ValueError(f"Failed to parse string: '{SECRET}'")

    monkeypatch.setattr(validation, "parse_column", crash)
    failures, _ = failures_of(frame_of())
    assert failures == [("age", "could not be parsed (ValueError)", None)]


def test_gx_exception_is_a_hard_failure():
    check = _Check(column="ghost", holds="column `ghost`: no nulls", fails="nulls in a non-nullable column",
                   expectation="ExpectColumnValuesToNotBeNull", kwargs={"column": "ghost"})
    failures, version = _run_expectations(pd.DataFrame({"a": [1]}), [check], suite="t")
    assert failures == [("ghost", "could not be checked (no nulls)", None)]
    assert version.startswith("1.")


# ------------------------------------------------------------------------------ repair (the default)


def repaired(*rows: dict, columns: dict | None = None, good_rows: int = 3):
    return validate_frame(frame_of(*rows, good_rows=good_rows) if columns is None else rows[0],
                          make_spec(columns, on_invalid="repair"), source_name="s.csv")


def test_repair_is_the_default_policy():
    assert parse_spec({"dataset": "t", "source": "s.csv", "columns": COLUMNS, "sampling": {"rows": 1},
                       "privacy": {"epsilon": 1.0, "lifetime_epsilon": 2.0},
                       "publish": {"target": "r"}}).validation.on_invalid == "repair"


def test_repair_clamps_numbers_and_datetimes_to_the_declared_bounds():
    checked = repaired({"age": "200"}, {"age": "16", "score": "1.5"}, {"joined": "2019-12-31T23:59:59"})
    frame = checked.frame
    assert len(frame) == 6 and frame["age"].tolist()[3:] == [90, 17, 40]
    assert frame["score"].tolist()[4] == 1.0 and frame["joined"].iloc[5] == pd.Timestamp("2020-01-01")
    assert checked.repair.touched.tolist() == [False] * 3 + [True] * 3
    assert checked.repair.restricted()["records_repaired"] == 3


def test_repair_clamps_one_sided_bounds_on_their_side_only():
    columns = {"n": {"type": "integer", "min": 0}, "x": {"type": "float", "max": 2.5}}
    raw = pd.DataFrame({"n": pd.Series(["-1", "5"], dtype="str"), "x": pd.Series(["3", "-7"], dtype="str")})
    frame = repaired(raw, columns=columns).frame
    assert frame["n"].tolist() == [0, 5] and frame["x"].tolist() == [2.5, -7.0]


def test_repair_nulls_bad_values_of_nullable_columns_and_truncates_long_texts():
    checked = repaired({"score": SECRET}, {"comment": SECRET * 3})
    frame = checked.frame
    assert len(frame) == 5 and pd.isna(frame["score"].iloc[3]) and frame["score"].iloc[4] == 0.5
    assert frame["comment"].iloc[4] == (SECRET * 3)[:20]
    rules = {(r["column"], r["problem"], r["action"]): r["records"] for r in checked.repair.restricted()["rules"]}
    assert rules == {("score", "values of the wrong type", "set to null"): 1,
                     ("comment", "texts longer than 20 characters", "truncated"): 1}


def test_repair_drops_records_whose_non_nullable_value_is_bad_or_missing():
    checked = repaired({"age": SECRET}, {"city": SECRET}, {"member": None}, {"city": "Lima"})
    assert checked.frame["city"].tolist() == ["Oslo", "Oslo", "Oslo", "Lima"]
    assert checked.repair.kept.tolist() == [True] * 3 + [False] * 3 + [True]
    assert checked.repair.touched.tolist() == [False] * 3 + [True] * 3 + [False]
    report = checked.repair.restricted()
    assert (report["records_read"], report["records_repaired"], report["records_dropped"]) == (7, 0, 3)
    assert SECRET not in json.dumps(report)


def test_repair_counts_a_record_once_however_many_of_its_values_are_repaired():
    checked = repaired({"age": "200", "score": "7", "comment": SECRET * 3, "city": SECRET})
    assert checked.repair.touched.tolist() == [False] * 3 + [True] and len(checked.frame) == 3


def test_schema_level_problems_still_fail_under_repair():
    failures, message = failures_of(frame_of().drop(columns=["city"]), on_invalid="repair")
    assert failures == [("city", "is missing", None)]


def test_a_rule_still_failing_after_repair_is_an_internal_error(monkeypatch):
    def unrepaired(frame: pd.DataFrame, spec: ReleaseSpec, invalid=None):
        return dataclasses.replace(repair_records(frame, spec, invalid=invalid), frame=frame)

    monkeypatch.setattr(validation, "repair_records", unrepaired)  # GX checks the repaired frame
    with pytest.raises(InternalError, match="still fail after repair"):
        repaired({"age": "200"})


# ------------------------------------------------------------------------------ parsing decisions


@pytest.mark.parametrize(
    ("text", "value"), [("42", 42), ("+7", 7), (" -3 ", -3), ("3.0", 3), ("1e3", 1000), ("007", 7)]
)
def test_integer_column_accepts_integral_numbers(text, value):
    values, bad = parse_column(pd.Series([text], dtype="str"), make_spec().columns["age"])
    assert values.tolist() == [value] and not bad.any()


@pytest.mark.parametrize("text", ["3.5", "nan", "inf", "1,000", "x", "12345678901234567890", "0x1F"])
def test_integer_column_rejects_other_text(text):
    values, bad = parse_column(pd.Series([text], dtype="str"), make_spec().columns["age"])
    assert bad.tolist() == [True] and values.isna().all()


@pytest.mark.parametrize(("text", "value"), [("true", True), ("FALSE", False), (" Yes", True), ("no", False),
                                             ("1", True), ("0", False)])
def test_boolean_column_accepts_documented_spellings(text, value):
    values, bad = parse_column(pd.Series([text], dtype="str"), make_spec().columns["member"])
    assert values.tolist() == [value] and not bad.any()


def test_datetime_column_parses_iso_8601_and_converts_offsets_to_utc():
    raw = pd.Series(["2022-03-04", "2022-03-04T10:00:00", "2022-03-04 10:00:00.5",
                     "2022-03-04T10:00:00+02:00", "04/03/2022"], dtype="str")
    values, bad = parse_column(raw, make_spec().columns["joined"])
    assert str(values.dtype) == "datetime64[us]"
    assert values.tolist()[:4] == [pd.Timestamp("2022-03-04"), pd.Timestamp("2022-03-04 10:00"),
                                   pd.Timestamp("2022-03-04 10:00:00.5"), pd.Timestamp("2022-03-04 08:00")]
    assert bad.tolist() == [False, False, False, False, True]


def test_na_string_is_a_category_not_a_null():
    frame = validate_frame(frame_of({"city": "NA"}), make_spec(), source_name="s.csv").frame
    assert frame["city"].iloc[-1] == "NA"


def test_jsonl_values_are_validated_by_their_json_types(tmp_path):
    rows = [{**GOOD, "age": 40, "score": 0.25, "member": True}, {**GOOD, "age": 41.0, "member": 0}]
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = make_spec(tmp_path=tmp_path, source="s.jsonl")
    frame = validate_frame(read_source(spec), spec, source_name="s.jsonl").frame
    assert frame["age"].tolist() == [40, 41] and frame["member"].tolist() == [True, False]
    bad = [{**GOOD, "age": True, "city": [SECRET], "comment": {"k": SECRET}}]
    (tmp_path / "s.jsonl").write_text(json.dumps(bad[0]))
    with pytest.raises(SchemaValidationError) as info:
        validate_frame(read_source(spec), spec, source_name="s.jsonl")
    assert info.value.failures == [("age", "values are not integers"),
                                   ("city", "values are not strings"),
                                   ("comment", "values are not strings")]
    assert SECRET not in str(info.value)


def test_parquet_typed_columns_validate(tmp_path):
    table = pa.table({
        "age": pa.array([40, 50], pa.int32()), "score": pa.array([0.5, None]), "member": [True, False],
        "joined": pa.array([pd.Timestamp("2021-01-01"), pd.Timestamp("2022-01-01")], pa.timestamp("ms")),
        "city": ["Oslo", "NA"], "comment": [None, "ok"],
    })
    pq.write_table(table, tmp_path / "s.parquet")
    spec = make_spec(tmp_path=tmp_path, source="s.parquet")
    frame = validate_frame(read_source(spec), spec, source_name="s.parquet").frame
    assert frame["age"].tolist() == [40, 50] and str(frame["joined"].dtype) == "datetime64[us]"
    assert frame["score"].isna().tolist() == [False, True]


def test_unsigned_integers_beyond_int64_are_not_integers():
    raw = pd.Series([1, 2**63], dtype="uint64")
    values, bad = parse_column(raw, make_spec().columns["age"])
    assert values.tolist()[0] == 1 and bad.tolist() == [False, True]


_TEXT_CELLS = st.one_of(
    st.none(), st.text(max_size=12), st.integers(-(2**70), 2**70).map(str), st.floats().map(str),
    st.sampled_from(["٣", "１２", "+-1", "-0", "2020", "2020-02-30", "1e400", "9999-99-99", " 7 "]),
)
_JSON_CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(cells=st.lists(_TEXT_CELLS, min_size=1, max_size=8))
def test_parsing_any_text_never_raises_and_flags_exactly_the_unparsed_cells(cells):
    raw = pd.Series(cells, dtype="str")
    for col in make_spec().columns.values():
        values, bad = parse_column(raw, col)
        assert str(values.dtype) == str(pd.Series([], dtype=pandas_dtype(col)).dtype)
        assert (bad == (raw.notna() & values.isna())).all()


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(_JSON_CELLS, min_size=1, max_size=6))
def test_parsing_any_json_values_never_raises(cells):
    raw = pd.Series(cells, dtype="object")
    for col in make_spec().columns.values():
        values, bad = parse_column(raw, col)
        assert len(values) == len(bad) == len(raw)
        assert not (bad & raw.isna()).any()
