"""Reading the private source into a frame of *what is in the file*, with one-line errors.

The reader does no type inference: a CSV is read as text (``str`` columns, an empty cell is the only
null), Parquet and JSON Lines keep the types they carry (Parquet with pandas nullable dtypes, JSON
Lines as ``object`` columns of the decoded JSON values). Types, bounds and domains are checked later,
against the spec, by :func:`safesynth.validation.validate_frame`, so that a bad value is reported and
never silently coerced.

Every failure is one :class:`~safesynth.errors.SourceReadError` line naming the source and, when
known, the column (a bad record's line, and how many there are, go in its ``restricted`` mapping only):
missing file, permission denied, not a regular file (a directory, FIFO,
device or socket), a symlink loop, larger than ``max_source_bytes`` (on disk or decompressed), out of
memory, empty file, header only, malformed CSV (ragged rows, unbalanced quotes, text after a closing
quote), text that is not UTF-8 (a UTF-8 BOM is fine), duplicate column headers, an invalid Parquet file,
a line that is not a JSON object. Messages never contain cell values: library messages (pyarrow's
quote cells) are never shown, only their class. Column names count as schema metadata, with two
cautions: when a declared column is missing, the "header" may really be a data row (a file without a
header), so undeclared names are then counted, not named; and the keys of JSON Lines records can be
per-record data, so undeclared keys are not logged at all (not even their number, a statistic of the
records; ``load_source`` still returns them for the restricted zone).

Memory: the source is streamed, never held as a whole. CSV is parsed by pyarrow from a file object
(every declared column read as string, undeclared columns never materialised); JSON Lines is parsed
line by line, keeping the declared keys only; Parquet reads only the declared columns. Compression is
inferred from the extension (``.gz``, ``.bz2``, ``.xz``, ``.zst``) by fsspec, and the decompressed bytes
are counted as they are read, so a compression bomb stops at ``max_source_bytes``.

:func:`check_source` is the pre-flight: it looks at the source's metadata only (it never opens it).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import io
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.compression import compr
from fsspec.implementations.local import LocalFileSystem

from safesynth.errors import SafeSynthError, SchemaValidationError, SourceReadError
from safesynth.spec import ReleaseSpec

__all__ = ["LoadedSource", "check_source", "load_source", "read_source", "source_display"]

logger = logging.getLogger(__name__)

_KIND = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON Lines"}
_BLANK = b"\xef\xbb\xbf \t\r\n"
_PEEK = 1 << 16  # bytes looked at for the empty-file check and, first, for the CSV header
_HEADER_LIMIT = 16 * 2**20
# pyarrow parses in blocks (one record must fit in one); the bytes read, checked and parsed at a time.
# Larger blocks do not read faster, and their transient copies add to the peak memory.
_CSV_BLOCK = 4 * 2**20


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LoadedSource:
    """The declared columns of the source, as read, and what the reader dropped.

    Attributes:
        frame: declared columns in declared order (undeclared ones dropped), values as read.
        source: display name of the source (no credentials, no query string).
        format: ``csv``, ``parquet`` or ``jsonl``.
        dropped_columns: names of undeclared columns that were dropped (for JSON Lines, the undeclared
            keys, which may be per-record data: count them, do not show them).
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
    """Pre-flight check of the source that reads no private data: it never opens the source.

    Checks, from metadata only (``os.stat`` and ``os.access``; ``fs.info`` for fsspec URLs), that the
    format is known, the source exists, is a regular file (not a directory, FIFO, device or socket:
    opening a FIFO would block), has no symlink loop, is readable, and is at most
    ``max_source_bytes`` on disk. A compressed source can still exceed the limit when decompressed;
    the reader stops it there.

    Raises:
        SpecError: the format is unknown (no known extension and no ``format``).
        SourceReadError: any of the checks above fails (one line, exit code 2).
    """
    _ = spec.source_format  # raises SpecError for an unknown format
    source = source_display(spec)
    try:
        fs, path = fsspec.core.url_to_fs(spec.source_uri, **spec.source_options)
        if isinstance(fs, LocalFileSystem):
            _check_local(path, source, spec.max_source_bytes)
            if not os.access(path, os.R_OK):
                raise PermissionError(errno.EACCES, "no read permission")
        else:
            _check_remote(fs, path, source, spec.max_source_bytes)
        return
    except SafeSynthError:
        raise
    except Exception as exc:
        error, cause = _read_failure(exc, source)
    raise error from cause  # outside the except: see _read_failure


def read_source(spec: ReleaseSpec) -> pd.DataFrame:
    """Read the spec's source: the declared columns, as read (see the module docstring).

    Undeclared columns are dropped and logged at INFO level: CSV and Parquet columns by name, JSON
    Lines keys as a count (keys can be per-record data).

    Raises:
        SourceReadError: the source cannot be read or parsed (one line, no cell values).
        SchemaValidationError: declared columns are missing (rule ``is missing``).
    """
    loaded = load_source(spec)
    dropped = loaded.dropped_columns
    if dropped and loaded.format != "jsonl":  # JSON Lines keys are per-record data: nothing is logged
        logger.info("%s: dropped %d undeclared column(s): %s", loaded.source, len(dropped),
                    ", ".join(f"`{name}`" for name in dropped))
    return loaded.frame


def load_source(spec: ReleaseSpec) -> LoadedSource:
    """Like :func:`read_source`, returning the frame with the names of the dropped columns.

    Memory is about the size of the resulting columns: the source is streamed (see the module
    docstring) and at most ``max_source_bytes`` bytes are read from it, after decompression.
    """
    source = source_display(spec)
    fmt = spec.source_format
    try:
        return _load(spec, source, fmt)
    except SafeSynthError:
        raise
    except Exception as exc:
        error, cause = _read_failure(exc, source)
    raise error from cause  # outside the except: see _read_failure


def _load(spec: ReleaseSpec, source: str, fmt: str) -> LoadedSource:
    declared = list(spec.columns)
    limit = spec.max_source_bytes
    with _open_binary(spec, source) as (raw, compressed):
        if fmt == "parquet":
            frame, names = _parse_parquet(raw, compressed, limit, source, declared)
        else:
            stream = _Bounded(raw, limit=limit, source=source, compressed=compressed,
                              checker=_CsvChecker(source) if fmt == "csv" else None)
            _refuse_blank(*stream.peek(_PEEK), source=source, fmt=fmt)
            parse = _parse_csv if fmt == "csv" else _parse_jsonl
            frame, names = parse(stream, source, declared)
        return _select_declared(frame, names, declared, source, fmt)


# ------------------------------------------------------------------------------------- file checks


def _read_failure(exc: Exception, source: str) -> tuple[SourceReadError, BaseException | None]:
    """One SourceReadError line for any failure, and the cause to chain, if any.

    Callers raise it outside their ``except`` block, so that the original exception is not kept as
    ``__context__`` unless it is the deliberate cause: pyarrow's texts quote cells.
    """
    if isinstance(exc, MemoryError):
        return SourceReadError(
            f"{source}: out of memory reading the source ({type(exc).__name__}); "
            "use a machine with more memory or a smaller source"
        ), None
    known = ((FileNotFoundError, "source not found; check `source` in the spec"),
             (IsADirectoryError, "the source is a directory, not a file"),
             (PermissionError, "permission denied reading the source"))
    for kind, what in known:
        if isinstance(exc, kind):
            return SourceReadError(f"{source}: {what}"), None
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return SourceReadError(f"{source}: the source path is a symlink loop"), None
    # Corrupt compressed streams (gzip.BadGzipFile, lzma.LZMAError, EOFError), unknown protocols,
    # missing filesystem packages, remote-store, pandas and pyarrow failures: the exception text may
    # quote data (pyarrow's quote records, BadGzipFile the first bytes) or URLs with credentials, so only
    # the class is named. System and network errors (with an errno) are chained, for debugging.
    cause = exc if isinstance(exc, OSError) and exc.errno is not None else None
    return SourceReadError(f"{source}: cannot read the source ({type(exc).__name__})"), cause


def _check_local(path: str, source: str, limit: int) -> None:
    # os.stat follows symlinks (a loop raises ELOOP) and opens nothing: a FIFO would block an open.
    status = os.stat(path)
    _require_regular(status.st_mode, source)
    _require_size(status.st_size, source, limit)
    if status.st_size == 0:
        raise SourceReadError(f"{source}: the source is empty (0 bytes)")


def _check_remote(fs: Any, path: str, source: str, limit: int) -> None:
    info = fs.info(path)
    if info.get("type") == "directory":
        raise SourceReadError(f"{source}: the source is a directory, not a file")
    size = info.get("size")
    if isinstance(size, int):
        _require_size(size, source, limit)
        if size == 0:
            raise SourceReadError(f"{source}: the source is empty (0 bytes)")


def _require_regular(mode: int, source: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise SourceReadError(f"{source}: the source is a directory, not a file")
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    what = next((name for test, name in kinds if test(mode)), "a special file")
    raise SourceReadError(f"{source}: the source is {what}, not a regular file; point `source` at a file")


def _require_size(size: int, source: str, limit: int, *, how: str = "is larger on disk than") -> None:
    if size > limit:
        raise SourceReadError(
            f"{source}: the source {how} `max_source_bytes` ({limit} bytes); "
            "raise `max_source_bytes` in the spec to read it"
        )


@contextlib.contextmanager
def _open_binary(spec: ReleaseSpec, source: str) -> Iterator[tuple[BinaryIO, bool]]:
    """The source's decompressed bytes, and whether it was compressed; non-regular files are refused."""
    opened = fsspec.open(spec.source_uri, mode="rb", compression="infer", **spec.source_options)
    limit = spec.max_source_bytes
    if not isinstance(opened.fs, LocalFileSystem):
        _check_remote(opened.fs, opened.path, source, limit)
        with opened as handle:
            yield handle, opened.compression is not None
        return
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(_open_local(opened.path, source, limit))
        if opened.compression is not None:
            handle = stack.enter_context(compr[opened.compression](handle, mode="rb"))
        yield handle, opened.compression is not None


@contextlib.contextmanager
def _open_local(path: str, source: str, limit: int) -> Iterator[BinaryIO]:
    _check_local(path, source, limit)
    # Defence in depth, against a swap between the check and the open: O_NONBLOCK makes opening a FIFO
    # return at once (O_NOCTTY: a terminal does not become ours), and fstat checks what was opened.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        status = os.fstat(fd)
        _require_regular(status.st_mode, source)
        _require_size(status.st_size, source, limit)
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def _refuse_blank(prefix: bytes, whole: bool, *, source: str, fmt: str) -> None:
    if whole and not prefix.strip(_BLANK):
        raise SourceReadError(f"{source}: the source is empty; expected a {_KIND[fmt]} file with data rows")


# ------------------------------------------------------------------------------------ bounded bytes


class _Bounded(io.RawIOBase):
    """A read-only byte stream that refuses to read past ``limit`` bytes and shows each chunk to a checker.

    Counting the bytes as they are read (after decompression) is what stops a compression bomb: the
    decompressor is never asked for more than ``limit + 1`` bytes. :meth:`peek` reads ahead without
    consuming (for the empty-file check and the CSV header). A failure is raised and kept in
    :attr:`problem`, in case a library re-raises it as its own exception.
    """

    def __init__(self, raw: BinaryIO, *, limit: int, source: str, compressed: bool,
                 checker: _CsvChecker | None = None) -> None:
        super().__init__()
        self.problem: SourceReadError | None = None
        self._raw, self._limit, self._source = raw, limit, source
        # On disk the size was checked before opening; what is left is decompression, a growing file
        # or a remote store that did not tell the size.
        self._how = "decompresses to more than" if compressed else "is larger than"
        self._checker = checker
        self._count = 0
        self._eof = False
        self._stopped = False
        self._ahead = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        # pyarrow calls read(block size); io.RawIOBase.read would allocate a whole block per call.
        if size is None or size < 0:
            return bytes(self.read_to_end())
        if self._ahead:
            data = bytes(self._ahead[:size])
            del self._ahead[:size]
            return data
        return self._pull(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._ahead:
            size = min(len(view), len(self._ahead))
            view[:size] = self._ahead[:size]
            del self._ahead[:size]
            return size
        data = self._pull(len(view))
        view[: len(data)] = data
        return len(data)

    def peek(self, size: int) -> tuple[bytes, bool]:
        """``(first bytes not yet consumed, up to size; whether they are all that is left)``."""
        while len(self._ahead) < size and not self._eof:
            self._ahead += self._pull(size - len(self._ahead))
        return bytes(self._ahead[:size]), self._eof and len(self._ahead) <= size

    def drain(self) -> None:
        """Read to the end, so that the end-of-file checks run (a parser may stop before EOF)."""
        while self._pull(_CSV_BLOCK):
            pass

    def read_to_end(self) -> bytearray:
        """Everything not yet consumed, read in large chunks."""
        data, self._ahead = self._ahead, bytearray()
        while chunk := self._pull(_CSV_BLOCK):
            data += chunk
        return data

    def stop(self) -> None:
        """Read nothing more: later reads see the end of the file."""
        self._stopped = True

    def _pull(self, size: int) -> bytes:
        if self._eof or self._stopped or size <= 0:
            return b""
        data = self._raw.read(min(size, self._limit - self._count + 1))
        try:
            self._count += len(data)
            _require_size(self._count, self._source, self._limit, how=self._how)
            if self._checker is not None:
                self._checker.feed(data) if data else self._checker.finish()
        except SourceReadError as exc:
            self.problem = exc
            raise
        self._eof = not data
        return data


# --------------------------------------------------------------------------------------------- csv

_QUOTE = ord('"')
_ENDS_FIELD = np.zeros(256, dtype=bool)  # bytes after which a quote opens a field, and after which
_ENDS_FIELD[[ord(","), ord("\r"), ord("\n")]] = True  # a closing quote is well-formed
_CHECK_STEP = 1 << 22  # bytes checked at once (the index arrays are a few times this)


class _CsvChecker:
    """Strict quoting and UTF-8, checked on the CSV bytes as they stream past, with line numbers.

    pyarrow is lenient where Python's csv module in strict mode (which it replaced here) is not: it
    takes text after a closing quote into the field and reads an unclosed quote to the end of the file.
    Both are refused here, with the csv module's rules: a quote opens a field only after a comma or a
    line end (elsewhere it is text), ``""`` inside a quoted field is a quote, and a closing quote must
    be followed by a comma, a line end or the end of the file.

    The rules are applied to runs of consecutive quotes with numpy, not byte by byte in Python. A run
    of odd length either toggles the state (at a field start: it opens a field from outside, closes one
    from inside) or leaves it outside (text in an unquoted field, or the closing quote of a field).
    """

    def __init__(self, source: str) -> None:
        self._source = source
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._lines = 0  # newlines in the bytes before the current piece
        self._carry = b"\n"  # the byte before the piece (never a quote), then a run the piece cut
        self._quoted = False
        self._open: tuple[int, bytes, int] = (0, b"", 0)  # (lines before, piece, position) of the open quote
        self._started = False

    def feed(self, data: bytes) -> None:
        self._check_utf8(data)
        if not self._started:
            self._started = True
            data = data.removeprefix(codecs.BOM_UTF8)
        for start in range(0, len(data), _CHECK_STEP):
            self._scan(data[start : start + _CHECK_STEP], final=False)

    def finish(self) -> None:
        self._check_utf8(b"", final=True)
        self._scan(b"", final=True)
        if self._quoted:
            lines, buf, pos = self._open
            line = lines + buf.count(b"\n", 1, pos) + 1
            raise SourceReadError(
                f"{self._source}: malformed CSV: unbalanced quote (a quoted field never closes)",
                restricted={"line": line},
            )

    def _scan(self, data: bytes, *, final: bool) -> None:
        buf = self._carry + data
        arr = np.frombuffer(buf, dtype=np.uint8)
        quotes = np.flatnonzero(arr == _QUOTE)
        first = np.ones(len(quotes), dtype=bool)
        first[1:] = np.diff(quotes) != 1
        starts = quotes[first]
        ends = starts + np.diff(np.append(np.flatnonzero(first), len(quotes)))  # one past each run
        self._carry = buf[-1:]
        if not final and len(ends) and ends[-1] == len(buf):  # the piece cuts a run: keep it for later
            self._carry = buf[starts[-1] - 1 :]
            starts, ends = starts[:-1], ends[:-1]
        if len(starts):
            self._runs(buf, arr, starts, ends)
        self._lines += data.count(b"\n")

    def _runs(self, buf: bytes, arr: Any, starts: Any, ends: Any) -> None:
        odd = (ends - starts) % 2 == 1
        at_start = _ENDS_FIELD[arr[starts - 1]]  # buf[0] is never a quote: starts >= 1
        clean = np.ones(len(ends), dtype=bool)  # the run is followed by a field end or the file end
        inside = ends < len(arr)
        clean[inside] = _ENDS_FIELD[arr[ends[inside]]]
        # State after each run: outside after the last odd run inside a field, then toggled by each
        # odd run at a field start (before any such reset: the state the piece began in).
        toggles = np.cumsum(odd & at_start)
        last_reset = np.maximum.accumulate(np.where(odd & ~at_start, np.arange(len(odd)), -1))
        since = toggles - np.where(last_reset >= 0, toggles[np.maximum(last_reset, 0)], 0)
        after = (np.where(last_reset >= 0, 0, int(self._quoted)) + since) % 2 == 1
        before = np.concatenate(([self._quoted], after[:-1]))
        closing = np.where(before, odd, at_start & ~odd)  # the run's last quote closes a field
        bad = np.flatnonzero(closing & ~clean)
        if len(bad):
            line = self._lines + buf.count(b"\n", 1, int(ends[bad[0]])) + 1
            raise SourceReadError(
                f"{self._source}: malformed CSV: malformed quoting "
                "(a closing quote must be followed by a comma or a line end)",
                restricted={"line": line},
            )
        opening = np.flatnonzero(~before & at_start & odd)
        self._quoted = bool(after[-1])
        if self._quoted and len(opening):
            self._open = (self._lines, buf, int(starts[opening[-1]]))

    def _check_utf8(self, data: bytes, *, final: bool = False) -> None:
        pending = len(self._utf8.getstate()[0])  # bytes of a character cut by the previous chunk
        if not pending and data.isascii():
            return  # valid UTF-8, and no decoded copy made
        try:
            self._utf8.decode(data, final)
        except UnicodeDecodeError as exc:
            line = self._lines + data.count(b"\n", 0, max(0, exc.start - pending)) + 1
            raise _not_utf8(self._source, line) from None


def _not_utf8(source: str, line: int) -> SourceReadError:
    return SourceReadError(
        f"{source}: not UTF-8 text; re-save the file as UTF-8", restricted={"line": line}
    )


class _RaggedRows:
    """pyarrow's invalid-row handler: skip and count rows with the wrong number of fields."""

    def __init__(self) -> None:
        self.count = 0
        self.first: tuple[int | None, int, int] | None = None

    def __call__(self, row: Any) -> str:
        # row.text is the raw record: never kept, never shown.
        self.count += 1
        if self.first is None:
            self.first = (row.number, row.actual_columns, row.expected_columns)
        return "skip"

    def check(self, source: str) -> None:
        if self.first is None:
            return
        line, got, expected = self.first
        raise SourceReadError(
            f"{source}: malformed CSV: rows with the wrong number of fields (the header has {expected})",
            restricted={"rows": self.count, "first_line": line, "first_fields": got},
        )


def _parse_csv(stream: _Bounded, source: str, declared: list[str]) -> tuple[pd.DataFrame, list[str]]:
    header = _csv_header(stream, source)
    _check_unique(header, source, declared=set(declared))
    _require_declared(header, declared, source)  # before reading the rows: fail fast
    ragged = _RaggedRows()
    failure: SafeSynthError | None = None
    try:
        table = pacsv.open_csv(stream, **_csv_options(declared, ragged)).read_all()
        stream.drain()
    except (SafeSynthError, MemoryError):
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        failure = _csv_failure(stream, exc, source)
    finally:
        stream.stop()  # pyarrow reads ahead on a thread of its own: no more reads after this
    if failure is not None:
        raise failure  # outside the except: pyarrow's exception (it quotes the record) is not kept
    ragged.check(source)
    if table.num_rows == 0:
        raise SourceReadError(f"{source}: no data rows (the CSV has a header only)")
    return table.to_pandas(self_destruct=True), header


def _csv_options(declared: list[str], ragged: _RaggedRows) -> dict[str, Any]:
    return {
        # One thread: pyarrow then knows the line number of a ragged row.
        "read_options": pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK),
        "parse_options": pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=ragged),
        # Only declared columns are converted, all as text: empty cells (quoted or not) are null;
        # nothing else is ("NA", "null", "?" may be legitimate categories). large_string is what
        # pandas' str dtype holds: the frame then shares the table's buffers instead of a cast copy.
        "convert_options": pacsv.ConvertOptions(
            column_types={name: pa.large_string() for name in declared}, include_columns=declared,
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True,
        ),
    }


def _csv_failure(stream: _Bounded, exc: Exception, source: str) -> SafeSynthError:
    if stream.problem is not None:
        return stream.problem
    # pyarrow's message quotes the record: it is only inspected, never shown.
    if "straddl" in str(exc):
        why = f"a record is longer than {_CSV_BLOCK} bytes (the parser's block)"
    else:
        why = f"the parser failed ({type(exc).__name__})"
    return SourceReadError(f"{source}: malformed CSV: {why}")


def _csv_header(stream: _Bounded, source: str) -> list[str]:
    """The header record, parsed from the first whole lines of the stream (which stay unread)."""
    size = _PEEK
    while True:
        prefix, whole = stream.peek(size)
        end = len(prefix) if whole else prefix.rfind(b"\n") + 1  # whole lines: no cut record
        records = (fields for fields in csv.reader(
            io.StringIO(prefix[:end].decode("utf-8-sig"), newline=""), strict=True) if fields)
        try:
            header = next(records, None)
        except csv.Error as exc:
            if "field limit" in str(exc):
                limit = csv.field_size_limit()
                raise SourceReadError(
                    f"{source}: malformed CSV: a header field is longer than {limit} characters"
                ) from None
            # A quoted header field continues past the prefix (or the header is malformed: then the
            # checker reports it with its line when the stream reaches it).
            header = None
        if header is not None:
            if whole and _no_more_records(records):
                raise SourceReadError(f"{source}: no data rows (the CSV has a header only)")
            return header
        if whole:
            raise SourceReadError(f"{source}: the source is empty; expected a CSV header and data rows")
        if size >= _HEADER_LIMIT:
            raise SourceReadError(
                f"{source}: the CSV header does not end within {_HEADER_LIMIT // 2**20} MiB "
                "(an unbalanced quote?)"
            )
        size *= 4


def _no_more_records(records: Iterator[list[str]]) -> bool:
    try:
        return next(records, None) is None
    except csv.Error:  # a field over the csv module's size limit: rows follow; pyarrow reads them
        return False


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


def _parse_parquet(
    raw: BinaryIO, compressed: bool, limit: int, source: str, declared: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    if compressed or not raw.seekable():
        # Parquet needs random access: a compressed file is decompressed into memory, bounded.
        data = _Bounded(raw, limit=limit, source=source, compressed=compressed).read_to_end()
        _refuse_blank(bytes(data[:_PEEK]), len(data) <= _PEEK, source=source, fmt="parquet")
        file: Any = pa.BufferReader(pa.py_buffer(data))
    else:
        head = raw.read(_PEEK)
        raw.seek(0)
        _refuse_blank(head, len(head) < _PEEK, source=source, fmt="parquet")
        file = raw
    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        _check_unique(names, source, declared=set(declared))
        table = parquet.read(columns=[name for name in names if name in declared])
    except (SourceReadError, MemoryError):
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


def _json_record(raw: bytes, number: int, source: str) -> dict[str, Any] | None:
    """The object on one line (``None`` for a blank line); one-line errors that name the line."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(source, number) from None
    if not text.strip():
        return None
    try:
        record = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey:
        raise SourceReadError(f"{source}: a line repeats a key; each key must appear once",
                              restricted={"line": number}) from None
    except json.JSONDecodeError as exc:
        raise SourceReadError(
            f"{source}: a line is not valid JSON", restricted={"line": number, "character": exc.colno}
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer over 4300 digits, nesting too deep
        raise SourceReadError(f"{source}: a line is not valid JSON ({type(exc).__name__})",
                              restricted={"line": number}) from None
    if not isinstance(record, dict):
        raise SourceReadError(f"{source}: a line is not a JSON object; expected one object per line",
                              restricted={"line": number})
    return record


def _parse_jsonl(stream: _Bounded, source: str, declared: list[str]) -> tuple[pd.DataFrame, list[str]]:
    # Line by line, keeping the declared keys only: memory is the declared values, not the file.
    # (pyarrow.json does not fit: it infers one type per column and fails when a later line has another
    # JSON type, while a column may mix them: validation reads "3" and 3, true and 1 alike.)
    columns: dict[str, list[Any]] = {name: [] for name in declared}
    keys: dict[str, None] = {}  # every key seen, in order of first appearance
    rows = 0
    for number, line in enumerate(io.BufferedReader(stream, buffer_size=1 << 20), start=1):
        record = _json_record(line, number, source)
        if record is None:
            continue
        keys.update(dict.fromkeys(record))
        for name, values in columns.items():
            values.append(record.get(name))
        rows += 1
    if not rows:
        raise SourceReadError(f"{source}: no data rows (the JSON Lines file has no records)")
    # object columns of the decoded values: no inference, a missing key is a null.
    frame = pd.DataFrame({name: pd.Series(values, dtype="object") for name, values in columns.items()})
    return frame, list(keys)


# ----------------------------------------------------------------------------------------- columns


def _require_declared(names: list[str], declared: list[str], source: str) -> None:
    present = set(names)
    missing = [name for name in declared if name not in present]
    if missing:
        # Undeclared names are not reported here: the "header" may be a data row.
        raise SchemaValidationError([(name, "is missing") for name in missing], source=source)


def _select_declared(
    frame: pd.DataFrame, names: list[str], declared: list[str], source: str, fmt: str
) -> LoadedSource:
    _require_declared(names, declared, source)
    keep = set(declared)
    dropped = tuple(str(name) for name in names if name not in keep)
    selected = frame if list(frame.columns) == declared else frame[declared].copy()
    selected.index = pd.RangeIndex(len(selected))
    return LoadedSource(frame=selected, source=source, format=fmt, dropped_columns=dropped)
