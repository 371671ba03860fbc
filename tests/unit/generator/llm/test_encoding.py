"""Row <-> token encoding: exact round trips, public-only vocabulary, text budgets."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safesynth.errors import SpecError
from safesynth.generator.llm.encoding import BOS, EOS, NULL, NumberCodec, RowCodec, TextCodec
from safesynth.schema import conform

from .conftest import ALL_TYPES, TABULAR, llm_spec, tabular_frame

DAY0 = dt.datetime(2020, 1, 2)  # first day on the grid of column `d` (its min is 2020-01-01 12:00)


def _maybe(strategy, nullable: bool):
    return st.one_of(st.none(), strategy) if nullable else strategy


@st.composite
def all_type_rows(draw) -> dict:
    return {
        "n": draw(st.integers(-5, 12_345)),
        "k": draw(_maybe(st.just(3), True)),
        "x": draw(_maybe(st.integers(10, 255).map(lambda k: round(k / 100, 2)), True)),
        "c": draw(_maybe(st.sampled_from(["a", "b b", "ç"]), True)),
        "f": draw(_maybe(st.booleans(), True)),
        "d": draw(_maybe(st.integers(0, 424).map(lambda k: DAY0 + dt.timedelta(days=k)), True)),
        "s": draw(st.integers(0, 86_410).map(lambda k: dt.datetime(2020, 1, 1) + dt.timedelta(seconds=k))),
        "t": draw(_maybe(st.text(max_size=6), True)),
    }


def _frame(records: list[dict], spec) -> pd.DataFrame:
    raw = pd.DataFrame({name: pd.Series([r[name] for r in records], dtype=object) for name in spec.columns})
    return conform(raw, spec)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(all_type_rows(), min_size=1, max_size=8), perm_seed=st.integers(0, 2**32 - 1))
def test_encode_decode_is_exact_for_every_valid_row_in_any_column_order(tmp_path, records, perm_seed):
    spec = llm_spec(tmp_path, ALL_TYPES, context_length=512)
    codec = RowCodec.from_spec(spec, context_length=512)
    frame = _frame(records, spec)
    rng = np.random.default_rng(perm_seed)
    orders = np.stack([rng.permutation(len(spec.columns)) for _ in records])
    sequences = codec.encode(frame, orders)
    assert all(len(s) <= codec.max_length for s in sequences)
    pd.testing.assert_frame_equal(codec.decode(sequences, spec), frame)


def test_every_integer_of_a_small_range_round_trips_exhaustively(tmp_path):
    spec = llm_spec(tmp_path, {"n": {"type": "integer", "min": -5, "max": 12_345}})
    codec = RowCodec.from_spec(spec, context_length=128)
    values = pd.DataFrame({"n": pd.array(np.arange(-5, 12_346), dtype="Int64")})
    pd.testing.assert_frame_equal(codec.decode(codec.encode(values), spec), values)


def test_floats_round_to_declared_precision_and_stay_inside_bounds(tmp_path):
    spec = llm_spec(tmp_path, {"x": {"type": "float", "min": 0.123, "max": 2.0, "precision": 2}})
    codec = RowCodec.from_spec(spec, context_length=128)
    frame = pd.DataFrame({"x": pd.array([0.123, 0.125, 1.999, 2.0, 0.5], dtype="Float64")})
    decoded = codec.decode(codec.encode(frame), spec)["x"].tolist()
    assert decoded == [0.13, 0.13, 2.0, 2.0, 0.5]  # 0.12 would be below min, so the grid starts at 0.13


def test_vocabulary_depends_on_the_spec_only(tmp_path):
    spec = llm_spec(tmp_path, TABULAR)
    one = RowCodec.from_spec(spec, context_length=128)
    two = RowCodec.from_spec(spec, context_length=128)
    assert one == two
    assert "<a=p>" in one.symbols and "<col:v>" in one.symbols and "<d99>" in one.symbols
    assert not any(s.startswith("<0x") for s in one.symbols)  # bytes only when a text column exists
    one.encode(tabular_frame(50))  # encoding data adds nothing to the vocabulary
    assert one == two


def test_sequence_layout_names_each_column_once(tmp_path):
    spec = llm_spec(tmp_path, TABULAR)
    codec = RowCodec.from_spec(spec, context_length=128)
    frame = tabular_frame(1)
    frame.loc[0, "b"] = None
    seq = codec.encode(frame, np.array([[3, 1, 0, 2]]))[0]
    names = codec.name_tokens
    assert seq[0] == BOS and seq[-1] == EOS
    assert [t for t in seq if t in names] == [names[3], names[1], names[0], names[2]]
    assert seq[seq.index(names[1]) + 1] == NULL


def test_text_longer_than_the_context_budget_loses_whole_characters(tmp_path):
    columns = {"t": {"type": "text", "max_length": 50}, "u": {"type": "text", "max_length": 50}}
    spec = llm_spec(tmp_path, columns, context_length=30)
    codec = RowCodec.from_spec(spec, context_length=30)
    text = [c for c in codec.columns if isinstance(c, TextCodec)]
    assert [c.max_bytes for c in text] == [12, 12]  # (30 - 2 fixed - 2 names) // 2 texts - 1 <eot>
    frame = pd.DataFrame({"t": pd.Series(["ab€€€€€"], dtype="str"), "u": pd.Series(["short"], dtype="str")})
    decoded = codec.decode(codec.encode(frame), spec)
    assert decoded.loc[0, "t"] == "ab€€€" and decoded.loc[0, "u"] == "short"  # 2 + 4 * 3 > 12 bytes


def test_context_too_short_for_one_row_is_a_spec_error(tmp_path):
    spec = llm_spec(tmp_path, TABULAR, context_length=16)
    RowCodec.from_spec(spec, context_length=16)
    with pytest.raises(SpecError, match="context_length"):
        RowCodec.from_spec(spec, context_length=8)


def test_number_width_is_the_fewest_base_100_digits(tmp_path):
    spec = llm_spec(tmp_path, ALL_TYPES)
    codec = RowCodec.from_spec(spec, context_length=128)
    widths = {c.name: c.width for c in codec.columns if isinstance(c, NumberCodec)}
    assert widths == {"n": 3, "k": 1, "x": 2, "d": 2, "s": 3}
