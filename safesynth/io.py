"""Reading the private source into a frame of *what is in the file*, with one-line errors.

The reader does no type inference: a CSV is read as text (``str`` columns, an empty cell is the only
null), Parquet and JSON Lines keep the types they carry (Parquet with pandas nullable dtypes, JSON
Lines as ``object`` columns of the decoded JSON values). Types, bounds and domains are checked later,
against the spec, by :func:`safesynth.validation.validate_frame`, so that a bad value is reported and
never silently coerced.

Every failure is one :class:`~safesynth.errors.SourceReadError` line naming the source and, when
known, the line or column: missing file, permission denied, a directory, empty file, header only,
malformed CSV (ragged rows, unbalanced quotes), text that is not UTF-8 (a UTF-8 BOM is fine),
duplicate column headers, an invalid Parquet file, a line that is not a JSON object. Messages never
contain cell values. Column names count as schema metadata, with one caution: when a declared column
is missing, the "header" may really be a data row (a file without a header), so undeclared names are
then counted, not named.

Compression is inferred from the extension (``.gz``, ``.bz2``, ``.xz``, ``.zst``) by fsspec. The
source is read into memory once; that is also where the validated frame lives.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from safesynth.errors import SchemaValidationError, SourceReadError
from safesynth.spec import ReleaseSpec

__all__ = ["LoadedSource", "load_source", "read_source", "source_display"]

logger = logging.getLogger(__name__)

# Python's csv module refuses fields longer than this (131072 by default). A declared text column may
# allow up to 100_000 characters, so a longer field is malformed input, reported as such.
_CSV_FIELD_LIMIT = csv.field_size_limit()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LoadedSource:
    """The declared columns of the source, as read, and what the reader dropped.

    Attributes:
        frame: declared columns in declared order (undeclared ones dropped), values as read.
        source: display name of the source (no credentials, no query string).
        format: ``csv``, ``parquet`` or ``jsonl``.
        dropped_columns: names of undeclared columns that were dropped (schema metadata).
    """

    frame: pd.DataFrame
    source: str
    format: str
    dropped_columns: tuple[str, ...]


def source_display(spec: ReleaseSpec) -> str:
    """The source location for messages: ``user:password@``, query string and fragment removed."""
    return display_location(spec.source_uri)


def display_location(location: str) -> str:
    """``location`` without credentials: ``s3://key:secret@bucket/x.csv?sig=..`` -> ``s3://bucket/x.csv``."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_source(spec: ReleaseSpec) -> None:
    """The source exists and is a regular file (checked without opening it: a FIFO would block)."""
    import stat

    uri = spec.source_uri
    if "://" in uri:
        return
    try:
        mode = Path(uri).stat().st_mode
    except FileNotFoundError:
        raise SourceReadError(f"{uri}: source file not found") from None
    except OSError as exc:
        raise SourceReadError(f"{uri}: cannot open the source ({exc.strerror or exc.__class__.__name__})") from None
    if not stat.S_ISREG(mode):
        raise SourceReadError(f"{uri}: the source is not a regular file")


def read_source(spec: ReleaseSpec) -> pd.DataFrame:
    """Read the spec's source: the declared columns, as read (see the module docstring).

    Undeclared columns are dropped and their names logged at INFO level.

    Raises:
        SourceReadError: the source cannot be read or parsed (one line, no cell values).
        SchemaValidationError: declared columns are missing (rule ``is missing``).
    """
    loaded = load_source(spec)
    if loaded.dropped_columns:
        logger.info("%s: dropped %d undeclared column(s): %s", loaded.source, len(loaded.dropped_columns),
                    ", ".join(f"`{name}`" for name in loaded.dropped_columns))
    return loaded.frame


def load_source(spec: ReleaseSpec) -> LoadedSource:
    """Like :func:`read_source`, returning the frame with the names of the dropped columns."""
    source = source_display(spec)
    fmt = spec.source_format
    declared = list(spec.columns)
    data = _read_bytes(spec.source_uri, spec.source_options, source)
    if not data.strip(b"\xef\xbb\xbf \t\r\n"):
        kind = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON Lines"}[fmt]
        raise SourceReadError(f"{source}: the source is empty; expected a {kind} file with data rows")
    if fmt == "csv":
        frame, names = _parse_csv(data, source, declared)
    elif fmt == "parquet":
        frame, names = _parse_parquet(data, source, declared)
    else:
        frame, names = _parse_jsonl(data, source)
    return _select_declared(frame, names, declared, source, fmt)


# ------------------------------------------------------------------------------------------- bytes


def _read_bytes(uri: str, options: dict[str, Any], source: str) -> bytes:
    try:
        with fsspec.open(uri, mode="rb", compression="infer", **options) as handle:
            data: bytes = handle.read()
            return data
    except FileNotFoundError:
        raise SourceReadError(f"{source}: source not found; check `source` in the spec") from None
    except IsADirectoryError:
        raise SourceReadError(f"{source}: the source is a directory, not a file") from None
    except PermissionError:
        raise SourceReadError(f"{source}: permission denied reading the source") from None
    except Exception as exc:
        # Corrupt compressed streams (gzip.BadGzipFile, lzma.LZMAError, EOFError), unknown protocols,
        # missing filesystem packages and remote-store failures: any filesystem may raise anything, and
        # the exception text may quote bytes or URLs with credentials, so only the class is named.
        raise SourceReadError(f"{source}: cannot read the source ({type(exc).__name__})") from exc


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceReadError(
            f"{source}: not UTF-8 text (first invalid byte on line {line}); re-save the file as UTF-8"
        ) from None


# --------------------------------------------------------------------------------------------- csv


def _csv_records(text: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(first physical line, fields)`` per non-blank record; line numbers are 1-based."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                why = f"a field is longer than {_CSV_FIELD_LIMIT} characters"
            elif "unexpected end of data" in str(exc):
                why = "unbalanced quote (a quoted field starting here never closes)"
            else:
                why = "malformed quoting (a closing quote must be followed by a comma or a line end)"
            raise SourceReadError(f"{source}: malformed CSV at line {line}: {why}") from None
        if fields:
            yield line, fields


def _parse_csv(data: bytes, source: str, declared: list[str]) -> tuple[pd.DataFrame, list[str]]:
    records = _csv_records(_decode(data, source), source)
    first = next(records, None)
    if first is None:
        raise SourceReadError(f"{source}: the source is empty; expected a CSV header and data rows")
    header = first[1]
    _check_unique(header, source, declared=set(declared))
    rows: list[list[str]] = []
    ragged = 0
    first_ragged: tuple[int, int] | None = None
    for line, fields in records:
        if len(fields) != len(header):
            ragged += 1
            first_ragged = first_ragged or (line, len(fields))
            continue
        rows.append(fields)
    if first_ragged is not None:
        line, got = first_ragged
        raise SourceReadError(
            f"{source}: malformed CSV: {ragged} row{'s' if ragged != 1 else ''} with the wrong number of "
            f"fields, first at line {line} ({got} fields, the header has {len(header)})"
        )
    if not rows:
        raise SourceReadError(f"{source}: no data rows (the CSV has a header only)")
    # Only declared columns are materialised; the header names are returned to report the others.
    keep = set(declared)
    wanted = {name: index for index, name in enumerate(header) if name in keep}
    frame = pd.DataFrame({name: _csv_column([row[index] for row in rows]) for name, index in wanted.items()})
    return frame, header


def _csv_column(values: list[str]) -> pd.Series:
    # Empty cells are null; nothing else is ("NA", "null", "?" may be legitimate categories).
    series = pd.Series(values, dtype="str")
    return series.mask(series == "")


def _check_unique(names: list[str], source: str, *, declared: set[str]) -> None:
    counts = Counter(names)
    dupes = [name for name, n in counts.items() if n > 1]
    if not dupes:
        return
    # A header may really be a data row; name a duplicate only when it is a declared (public) name.
    named = [f"`{name}`" for name in dupes if name in declared]
    others = len(dupes) - len(named)
    what = ", ".join(named + ([f"{others} undeclared name{'s' if others != 1 else ''}"] if others else []))
    raise SourceReadError(f"{source}: duplicate column headers ({what}); each column name must be unique")


# ----------------------------------------------------------------------------------------- parquet


def _nullable_dtype(arrow: pa.DataType) -> Any:
    if pa.types.is_boolean(arrow):
        return pd.BooleanDtype()
    if pa.types.is_integer(arrow) and not arrow.equals(pa.uint64()):
        return pd.Int64Dtype()
    if pa.types.is_floating(arrow):
        return pd.Float64Dtype()
    return None  # pandas' default (str for strings, datetime64 for timestamps, object otherwise)


def _parse_parquet(data: bytes, source: str, declared: list[str]) -> tuple[pd.DataFrame, list[str]]:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        _check_unique(names, source, declared=set(declared))
        table = parquet.read(columns=[name for name in names if name in declared])
    except SourceReadError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SourceReadError(f"{source}: not a valid Parquet file ({type(exc).__name__})") from None
    if parquet.metadata.num_rows == 0:
        raise SourceReadError(f"{source}: no data rows (the Parquet file has a schema only)")
    # Only declared columns were read; the schema's names are returned to report the others.
    return table.to_pandas(types_mapper=_nullable_dtype), names


# ------------------------------------------------------------------------------------------ jsonl


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


class _DuplicateKey(Exception):
    pass


def _parse_jsonl(data: bytes, source: str) -> tuple[pd.DataFrame, list[str]]:
    text = _decode(data, source)
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey:
            raise SourceReadError(
                f"{source}: line {number} repeats a key; each key must appear once"
            ) from None
        except json.JSONDecodeError as exc:
            raise SourceReadError(
                f"{source}: line {number} is not valid JSON (at character {exc.colno})"
            ) from None
        if not isinstance(record, dict):
            raise SourceReadError(
                f"{source}: line {number} is not a JSON object; expected one object per line"
            )
        records.append(record)
    if not records:
        raise SourceReadError(f"{source}: no data rows (the JSON Lines file has no records)")
    names = list(dict.fromkeys(key for record in records for key in record))
    # object columns of the decoded values: no inference, a missing key is a null.
    frame = pd.DataFrame(
        {name: pd.Series([record.get(name) for record in records], dtype="object") for name in names}
    )
    return frame, names


# ----------------------------------------------------------------------------------------- columns


def _select_declared(
    frame: pd.DataFrame, names: list[str], declared: list[str], source: str, fmt: str
) -> LoadedSource:
    present = set(names)
    missing = [name for name in declared if name not in present]
    if missing:
        # Undeclared names are not reported here: the "header" may be a data row.
        raise SchemaValidationError([(name, "is missing", None) for name in missing], source=source)
    keep = set(declared)
    dropped = tuple(str(name) for name in names if name not in keep)
    selected = frame[declared].copy()
    selected.index = pd.RangeIndex(len(selected))
    return LoadedSource(frame=selected, source=source, format=fmt, dropped_columns=dropped)
