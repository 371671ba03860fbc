"""Reading sources: what is in the file, or one SourceReadError line without cell values."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safesynth.errors import SchemaValidationError, SourceReadError
from safesynth.io import display_location, load_source, read_source, source_display
from safesynth.spec import ReleaseSpec, parse_spec

SECRET = "SECRET_9137"
COLUMNS = {
    "age": {"type": "integer", "min": 0, "max": 120},
    "city": {"type": "categorical", "categories": ["Oslo", "Lima", "NA"], "nullable": True},
}


def make_spec(
    tmp_path: Path, source: str | Path, columns: dict | None = None, **extra: object
) -> ReleaseSpec:
    data = {
        "dataset": "t",
        "source": str(source),
        "columns": columns or COLUMNS,
        "privacy": {"epsilon": 1.0, "lifetime_epsilon": 10.0},
        "sampling": {"rows": 10},
        "publish": {"target": str(tmp_path / "releases")},
        **extra,
    }
    return parse_spec(data, base_dir=tmp_path)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def read_failure(tmp_path: Path, name: str, content: str | bytes, **extra: object) -> SourceReadError:
    path = write(tmp_path, name, content)
    with pytest.raises(SourceReadError) as info:
        read_source(make_spec(tmp_path, path, **extra))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert SECRET not in message
    # Where a bad record is and how many there are is private: only in the restricted mapping.
    assert not re.search(r"line \d|\d+ rows?\b|\d+ fields", message), message
    return info.value


def read_error(tmp_path: Path, name: str, content: str | bytes, **extra: object) -> str:
    return str(read_failure(tmp_path, name, content, **extra))


# ------------------------------------------------------------------------------------------- csv


def test_csv_is_read_as_text_with_only_empty_cells_null(tmp_path):
    path = write(tmp_path, "s.csv", "age,city\n 42 ,NA\n7,\n3.0,Oslo\n")
    frame = read_source(make_spec(tmp_path, path))
    assert list(frame.columns) == ["age", "city"]
    assert frame["age"].tolist()[0] == " 42 " and frame["age"].tolist()[2] == "3.0"
    assert frame["city"].iloc[0] == "NA"  # a legitimate category, not a null marker
    assert frame["city"].isna().tolist() == [False, True, False]
    assert all(isinstance(dtype, pd.StringDtype) for dtype in frame.dtypes)


def test_csv_accepts_utf8_bom_crlf_quotes_and_blank_lines(tmp_path):
    path = write(tmp_path, "s.csv", "\ufeffage,city\r\n1,\"Oslo\"\r\n\r\n2,\"Li\"\"ma\"\r\n")
    frame = read_source(make_spec(tmp_path, path))
    assert frame["age"].tolist() == ["1", "2"]
    assert frame["city"].tolist() == ["Oslo", 'Li"ma']


def test_csv_columns_come_in_declared_order(tmp_path):
    path = write(tmp_path, "s.csv", "city,age\nOslo,1\n")
    assert list(read_source(make_spec(tmp_path, path)).columns) == ["age", "city"]


def test_ragged_rows_fail_with_their_line_and_count_kept_restricted(tmp_path):
    error = read_failure(tmp_path, "s.csv", f"age,city\n1,Oslo\n2,Lima,{SECRET}\n3\n4,Oslo\n")
    assert str(error).endswith("malformed CSV: rows with the wrong number of fields (the header has 2)")
    assert error.restricted == {"rows": 2, "first_line": 3, "first_fields": 3}


def test_short_row_is_ragged_not_a_null(tmp_path):
    error = read_failure(tmp_path, "s.csv", "age,city\n1,Oslo\n2\n")
    assert "rows with the wrong number of fields" in str(error)
    assert error.restricted == {"rows": 1, "first_line": 3, "first_fields": 1}


def test_unbalanced_quote_keeps_the_line_where_it_opens_restricted(tmp_path):
    error = read_failure(tmp_path, "s.csv", f'age,city\n1,Oslo\n2,"{SECRET}\n3,Lima\n')
    assert "malformed CSV: unbalanced quote" in str(error) and error.restricted == {"line": 3}


def test_text_after_closing_quote_is_malformed(tmp_path):
    error = read_failure(tmp_path, "s.csv", f'age,city\n1,"Oslo"{SECRET}\n')
    assert "malformed CSV: malformed quoting" in str(error) and error.restricted == {"line": 2}


@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff", "  \r\n"])
def test_empty_file_is_reported_as_empty(tmp_path, content):
    assert "the source is empty" in read_error(tmp_path, "s.csv", content)


def test_header_only_file_has_no_data_rows(tmp_path):
    assert "no data rows" in read_error(tmp_path, "s.csv", "age,city\n\n")


def test_non_utf8_file_keeps_the_line_restricted_and_never_shows_the_bytes(tmp_path):
    content = f"age,city\n1,Oslo\n2,{SECRET}\u00e9\n".encode("latin-1")
    error = read_failure(tmp_path, "s.csv", content)
    assert "not UTF-8 text; re-save the file as UTF-8" in str(error) and error.restricted == {"line": 3}
    assert "0xe9" not in str(error)


def test_duplicate_declared_header_is_named(tmp_path):
    message = read_error(tmp_path, "s.csv", "age,city,age,x,x\n1,Oslo,2,3,4\n")
    assert "duplicate column headers (`age`, 1 undeclared name)" in message


def test_duplicate_undeclared_header_is_counted_not_named(tmp_path):
    # Without a header row, the first data row is taken as the header: its values must not leak.
    message = read_error(tmp_path, "s.csv", f"age,city,{SECRET},{SECRET}\n1,Oslo,a,b\n")
    assert "duplicate column headers (1 undeclared name)" in message


def test_missing_declared_column_is_a_schema_error(tmp_path):
    path = write(tmp_path, "s.csv", f"age,{SECRET}\n1,Oslo\n")
    with pytest.raises(SchemaValidationError) as info:
        read_source(make_spec(tmp_path, path))
    assert info.value.failures == [("city", "is missing")]
    assert "column `city` is missing" in str(info.value)
    assert SECRET not in str(info.value)


def test_undeclared_columns_are_dropped_and_named_in_a_note(tmp_path, caplog):
    path = write(tmp_path, "s.csv", "age,zip,city,phone\n1,0150,Oslo,555\n")
    spec = make_spec(tmp_path, path)
    assert load_source(spec).dropped_columns == ("zip", "phone")
    with caplog.at_level(logging.INFO, logger="safesynth.io"):
        frame = read_source(spec)
    assert list(frame.columns) == ["age", "city"]
    assert "dropped 2 undeclared column(s): `zip`, `phone`" in caplog.text
    assert "0150" not in caplog.text and "555" not in caplog.text


def test_gzip_compression_is_inferred_from_the_extension(tmp_path):
    path = write(tmp_path, "s.csv.gz", gzip.compress(b"age,city\n1,Oslo\n"))
    assert read_source(make_spec(tmp_path, path))["city"].tolist() == ["Oslo"]


def test_corrupt_gzip_is_a_read_error(tmp_path):
    message = read_error(tmp_path, "s.csv.gz", b"this is not gzip " + SECRET.encode())
    assert "cannot read the source (BadGzipFile)" in message


# ------------------------------------------------------------------------------- unreadable source


def test_missing_file(tmp_path):
    spec = make_spec(tmp_path, tmp_path / "nope.csv")
    with pytest.raises(SourceReadError, match="nope.csv: source not found"):
        read_source(spec)


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(SourceReadError, match="dir.csv: the source is a directory"):
        read_source(make_spec(tmp_path, tmp_path / "dir.csv"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read mode-000 files")
def test_unreadable_file_is_permission_denied(tmp_path):
    path = write(tmp_path, "s.csv", "age,city\n1,Oslo\n")
    path.chmod(0)
    try:
        with pytest.raises(SourceReadError, match="permission denied"):
            read_source(make_spec(tmp_path, path))
    finally:
        path.chmod(0o600)


def test_permission_error_from_any_filesystem_is_permission_denied(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", SECRET)

    monkeypatch.setattr(fsspec, "open", denied)
    with pytest.raises(SourceReadError) as info:
        read_source(make_spec(tmp_path, tmp_path / "s.csv"))
    assert "s.csv: permission denied reading the source" in str(info.value)
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------------------------- parquet, jsonl


def test_parquet_round_trip_keeps_types_with_nullable_dtypes(tmp_path):
    table = pa.table({"age": pa.array([1, None, 3], pa.int64()), "city": ["Oslo", None, "Lima"],
                      "extra": [1.5, 2.5, 3.5]})
    pq.write_table(table, tmp_path / "s.parquet")
    loaded = load_source(make_spec(tmp_path, tmp_path / "s.parquet"))
    assert loaded.format == "parquet" and loaded.dropped_columns == ("extra",)
    assert str(loaded.frame["age"].dtype) == "Int64"
    assert loaded.frame["age"].isna().tolist() == [False, True, False]
    assert loaded.frame["city"].tolist()[::2] == ["Oslo", "Lima"]


def test_bad_parquet_is_a_read_error(tmp_path):
    message = read_error(tmp_path, "s.parquet", f"age,city\n1,{SECRET}\n")
    assert "not a valid Parquet file" in message


def test_parquet_without_rows_has_no_data_rows(tmp_path):
    pq.write_table(pa.table({"age": pa.array([], pa.int64()), "city": pa.array([], pa.string())}),
                   tmp_path / "s.parquet")
    with pytest.raises(SourceReadError, match="no data rows"):
        read_source(make_spec(tmp_path, tmp_path / "s.parquet"))


def test_jsonl_round_trip_keeps_json_values_as_objects(tmp_path):
    lines = [{"age": 1, "city": "Oslo"}, {"age": None, "city": "NA", "extra": True}, {"city": "Lima"}]
    path = write(tmp_path, "s.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    loaded = load_source(make_spec(tmp_path, path))
    assert loaded.dropped_columns == ("extra",)
    assert loaded.frame["age"].tolist()[0] == 1
    assert loaded.frame["age"].isna().tolist() == [False, True, True]
    assert loaded.frame["city"].tolist() == ["Oslo", "NA", "Lima"]


def test_bad_json_line_keeps_its_line_restricted(tmp_path):
    content = '{"age": 1, "city": "Oslo"}\n\n{"age": 2, "city": "' + SECRET + '"\n'
    error = read_failure(tmp_path, "s.jsonl", content)
    assert "a line is not valid JSON" in str(error) and error.restricted["line"] == 3


def test_json_line_that_is_not_an_object_keeps_its_line_restricted(tmp_path):
    content = f'{{"age": 1, "city": "Oslo"}}\n["{SECRET}"]\n'
    error = read_failure(tmp_path, "s.jsonl", content)
    assert "a line is not a JSON object" in str(error) and error.restricted == {"line": 2}


def test_json_line_with_a_repeated_key_keeps_its_line_restricted(tmp_path):
    content = f'{{"age": 1, "city": "Oslo", "city": "{SECRET}"}}\n'
    error = read_failure(tmp_path, "s.jsonl", content)
    assert "a line repeats a key" in str(error) and error.restricted == {"line": 1}


# ------------------------------------------------------------------------------------ locations


def test_fsspec_memory_url_is_read_with_storage_options(tmp_path):
    url = f"memory://safesynth-test-{uuid.uuid4().hex}/s.csv"
    with fsspec.open(url, "wb") as handle:
        handle.write(b"age,city\n5,Lima\n")
    frame = read_source(make_spec(tmp_path, url, source_options={}))
    assert frame["age"].tolist() == ["5"]


def test_file_url_is_read(tmp_path):
    path = write(tmp_path, "s.csv", "age,city\n1,Oslo\n")
    assert read_source(make_spec(tmp_path, f"file://{path}"))["city"].tolist() == ["Oslo"]


def test_relative_source_resolves_against_the_spec_directory(tmp_path):
    write(tmp_path, "s.csv", "age,city\n1,Oslo\n")
    assert len(read_source(make_spec(tmp_path, "s.csv"))) == 1


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("s3://AKIA:s3cr3t@bucket/data/x.csv?X-Amz-Signature=abc#frag", "s3://bucket/data/x.csv"),
        ("https://user@host.example/x.csv?token=abc", "https://host.example/x.csv"),
        ("memory://bucket/x.csv", "memory://bucket/x.csv"),
        ("/data/x?y.csv", "/data/x?y.csv"),
    ],
)
def test_display_location_strips_credentials_and_queries(location, shown):
    assert display_location(location) == shown


def test_errors_for_urls_never_show_credentials(tmp_path):
    spec = make_spec(tmp_path, f"memory://user:{SECRET}@/nowhere-{uuid.uuid4().hex}/x.csv")
    assert SECRET not in source_display(spec)
    with pytest.raises(SourceReadError) as info:
        read_source(spec)
    assert SECRET not in str(info.value)
