"""Rows <-> token sequences, built from the public spec only.

No vocabulary item, bin edge or length limit is learned from the private data: every symbol comes from a
declared name, category, bound, precision, resolution or ``max_length``.

A row is ``<bos> (<col:NAME> VALUE)* <eos>`` with one ``<col:...>`` token per column, so any column order
can be trained. With a fixed column order the names carry no information and are left out
(``names=False``: ``<bos> VALUE* <eos>``, about 40 % fewer tokens on typical tables). VALUE is one of

* categorical / boolean: one token per declared category (``<NAME=label>``),
* integer / float / datetime: a fixed number of base-100 digits (``<d00>`` ... ``<d99>``) of the
  offset of the value on its grid from the lowest grid point. The grid is the integers for integers,
  ``10**-precision`` steps for floats and days or seconds for datetimes, clipped to the declared range,
* text: UTF-8 bytes (``<0x00>`` ... ``<0xFF>``, no merges) then ``<eot>``; at most ``max_length``
  characters and at most :attr:`TextCodec.max_bytes` bytes (whole characters are dropped at the end
  when a text would not fit ``context_length``). With a pretrained model (``text=`` a
  :class:`TextTokens`, the model's own public BPE tokenizer) a text is instead that tokenizer's tokens,
  at most :attr:`TextCodec.max_bytes` of them (``<= max_length``: a token holds at least one character
  of any text that was cut to ``max_length`` first), then ``<eot>``; the BPE tokens sit in one block of
  the vocabulary (codec id ``BYTE0 + model id``) and ``<bos>``/``<eos>`` are the model's own tokens,
* ``<null>`` for a missing value of a nullable column.

``decode(encode(row)) == row`` for every valid row, up to the declared precision/resolution of floats
and datetimes and the byte budget of texts (see :class:`TextCodec`); with BPE, up to the token cap
(a decoded text is cut to ``max_length`` whole characters).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import numpy as np
import pandas as pd

from safesynth.errors import GeneratorError, SpecError
from safesynth.schema import conform
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    DatetimeColumn,
    FloatColumn,
    IntegerColumn,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["BASE", "BOS", "EOS", "EOT", "NULL", "PAD", "CategoryCodec", "NumberCodec", "RowCodec", "TextCodec",
           "TextTokens"]

PAD, BOS, EOS, NULL, EOT = range(5)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<null>", "<eot>")
#: Digits are base 100: a 0-99 age is one token, a 0-99,999 amount three.
BASE = 100
DIGIT0 = len(SPECIALS)
BYTE0 = DIGIT0 + BASE
_US = {"day": 86_400_000_000, "second": 1_000_000}

Cell = tuple[int, ...]


class TextTokens(Protocol):
    """A pretrained model's own (public) subword tokenizer, as the codec needs it for text cells.

    Token ids ``0 .. size - 1`` are the model's ids; ``specials`` are ids a text never contains
    (its BOS/EOS/padding and other control tokens).
    """

    @property
    def size(self) -> int: ...

    @property
    def specials(self) -> tuple[int, ...]: ...

    @property
    def bos(self) -> str | None: ...

    @property
    def eos(self) -> str | None: ...

    def tokens(self) -> list[str]:
        """The token strings of ids ``0 .. size - 1`` (they name the codec's text symbols)."""
        ...

    def encode(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryCodec:
    """One token per declared category (booleans: ``false``, ``true``)."""

    name: str
    nullable: bool
    labels: tuple[str, ...]
    tokens: tuple[int, ...]
    boolean: bool = False

    @property
    def max_tokens(self) -> int:
        return 1

    def encode(self, series: pd.Series) -> list[Cell]:
        lookup: dict[Any, Cell]
        if self.boolean:
            lookup = {True: (self.tokens[1],), False: (self.tokens[0],)}
        else:
            lookup = {label: (tok,) for label, tok in zip(self.labels, self.tokens, strict=True)}
        values = series.astype(object).where(series.notna(), None).tolist()
        return [(NULL,) if v is None else lookup[v] for v in values]

    def decode(self, cell: Cell) -> Any:
        if cell[0] == NULL:
            return None
        index = self.tokens.index(cell[0])
        return bool(index) if self.boolean else self.labels[index]


@dataclass(frozen=True, slots=True, kw_only=True)
class NumberCodec:
    """Fixed-width base-100 digits of ``grid(value) - low``; ``span = high - low`` is the largest offset."""

    name: str
    nullable: bool
    kind: str  # integer | float | datetime
    low: int
    span: int
    width: int
    scale: int = 1  # float: 10**precision; datetime: microseconds per unit

    @property
    def max_tokens(self) -> int:
        return self.width

    @property
    def bound_digits(self) -> tuple[int, ...]:
        return _digits(self.span, self.width)

    def _grid(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "integer":
            grid = values.astype(np.int64)
        elif self.kind == "float":
            grid = np.rint(values.astype(np.float64) * self.scale).astype(np.int64)
        else:
            grid = np.floor_divide(values.astype("datetime64[us]").astype(np.int64), self.scale)
        # uint64 arithmetic: an offset over a full int64 range still fits.
        offset = grid.astype(np.uint64) - np.uint64(self.low % 2**64)
        # Values just outside the grid (a float rounding up past max, a datetime in min's day) clip.
        offset = np.where(grid < self.low, np.uint64(0), offset)
        clipped: np.ndarray = np.minimum(offset, np.uint64(self.span))
        return clipped

    def encode(self, series: pd.Series) -> list[Cell]:
        isna = series.isna().to_numpy()
        if self.kind == "datetime":
            values = series.to_numpy(dtype="datetime64[us]", na_value=np.datetime64("NaT"))
            values = np.where(isna, np.datetime64(0, "us"), values)
        else:
            values = series.to_numpy(dtype=np.float64 if self.kind == "float" else np.int64, na_value=0)
        offsets = self._grid(values)
        digits = np.zeros((len(offsets), self.width), dtype=np.int64)
        rest = offsets.copy()
        for pos in range(self.width - 1, -1, -1):
            digits[:, pos] = (rest % np.uint64(BASE)).astype(np.int64)
            rest //= np.uint64(BASE)
        rows = (digits + DIGIT0).tolist()
        return [(NULL,) if na else tuple(row) for na, row in zip(isna.tolist(), rows, strict=True)]

    def decode(self, cell: Cell) -> Any:
        if cell[0] == NULL:
            return None
        offset = 0
        for tok in cell:
            offset = offset * BASE + (tok - DIGIT0)
        grid = self.low + offset
        if self.kind == "integer":
            return grid
        if self.kind == "float":
            return round(grid / self.scale, int(round(math.log10(self.scale))))
        return np.datetime64(grid * self.scale, "us")


@dataclass(frozen=True, slots=True, kw_only=True)
class TextCodec:
    """UTF-8 bytes, at most ``max_chars`` characters and ``max_bytes`` bytes, then ``<eot>``.

    ``max_bytes`` is ``4 * max_length`` unless the row would not fit ``context_length``; then texts
    longer than ``max_bytes`` bytes lose whole characters at the end (on encode and when generating).
    """

    name: str
    nullable: bool
    max_chars: int
    max_bytes: int  # with ``bpe``: the most BPE tokens
    bpe: TextTokens | None = None

    @property
    def max_tokens(self) -> int:
        return self.max_bytes + 1

    def encode(self, series: pd.Series) -> list[Cell]:
        values = series.astype(object).where(series.notna(), None).tolist()
        if self.bpe is not None:
            return self._encode_bpe(values, self.bpe)
        out: list[Cell] = []
        for value in values:
            if value is None:
                out.append((NULL,))
                continue
            text = value[: self.max_chars]
            data = text.encode("utf-8")
            while len(data) > self.max_bytes:
                text = text[:-1]
                data = text.encode("utf-8")
            out.append((*(BYTE0 + b for b in data), EOT))
        return out

    def _encode_bpe(self, values: list[Any], bpe: TextTokens) -> list[Cell]:
        present = [i for i, v in enumerate(values) if v is not None]
        encoded = iter(bpe.encode([values[i][: self.max_chars] for i in present]))
        out: list[Cell] = [(NULL,)] * len(values)
        for i in present:
            # The same cap as generation: at most max_bytes tokens (whole tokens dropped at the end), and
            # no character cut in two by the cap (byte-level tokens: up to 3 more tokens dropped).
            ids = next(encoded)
            if len(ids) > self.max_bytes:
                ids = ids[: self.max_bytes]
                for _ in range(3):
                    if not (ids and bpe.decode(ids).endswith("\ufffd")):
                        break
                    ids = ids[:-1]
            out[i] = (*(BYTE0 + t for t in ids), EOT)
        return out

    def decode(self, cell: Cell) -> Any:
        if cell[0] == NULL:
            return None
        if self.bpe is not None:
            # A cut token may leave a partial character (decoded as U+FFFD); cut to max_length characters.
            return self.bpe.decode([tok - BYTE0 for tok in cell[:-1]])[: self.max_chars]
        return bytes(tok - BYTE0 for tok in cell[:-1]).decode("utf-8")


ColumnCodec = CategoryCodec | NumberCodec | TextCodec


def _digits(value: int, width: int) -> tuple[int, ...]:
    out = []
    for _ in range(width):
        value, digit = divmod(value, BASE)
        out.append(digit)
    return tuple(reversed(out))


def _width(span: int) -> int:
    width = 1
    while BASE**width <= span:
        width += 1
    return width


def _float_grid(col: FloatColumn) -> tuple[int, int, int]:
    scale = 10**col.precision
    low = math.ceil(Decimal(repr(col.min)) * scale)
    high = math.floor(Decimal(repr(col.max)) * scale)
    # The decoded float must compare inside [min, max] as a float, not only as a decimal.
    while round(low / scale, col.precision) < col.min:
        low += 1
    while round(high / scale, col.precision) > col.max:
        high -= 1
    return low, high, scale


def _naive_us(value: dt.datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return int(np.datetime64(value, "us").astype(np.int64))


def _number_codec(name: str, col: IntegerColumn | FloatColumn | DatetimeColumn) -> NumberCodec:
    if isinstance(col, IntegerColumn):
        if col.min is None or col.max is None:
            raise GeneratorError(f"column `{name}` has no declared bounds; run DP discovery first")
        kind, low, high, scale = "integer", col.min, col.max, 1
    elif isinstance(col, FloatColumn):
        if col.min is None or col.max is None:
            raise GeneratorError(f"column `{name}` has no declared bounds; run DP discovery first")
        kind = "float"
        low, high, scale = _float_grid(col)
    else:
        kind, scale = "datetime", _US[col.resolution]
        low, high = -(-_naive_us(col.min) // scale), _naive_us(col.max) // scale
    if high < low:
        raise SpecError(f"column `{name}`: no value at the declared precision/resolution lies in [min, max]")
    return NumberCodec(name=name, nullable=col.nullable, kind=kind, low=low, span=high - low,
                       width=_width(high - low), scale=scale)


@dataclass(frozen=True, slots=True, kw_only=True)
class RowCodec:
    """The vocabulary and the per-column codecs of one spec (declared column order)."""

    symbols: tuple[str, ...]
    columns: tuple[ColumnCodec, ...]
    name_tokens: tuple[int, ...]
    max_length: int
    names: bool = True
    text: TextTokens | None = None

    @classmethod
    def from_spec(cls, spec: ReleaseSpec, *, context_length: int, names: bool = True,
                  text: TextTokens | None = None) -> RowCodec:
        """Build the codec. Reads only the spec (public); raises SpecError if a row cannot fit.

        ``names=False`` leaves the column-name tokens out of sequences (fixed column order only).
        ``text``: a pretrained model's tokenizer; text cells are its BPE tokens (not bytes), and
        ``<bos>``/``<eos>`` are its own where it has them.
        """
        column_names = list(spec.columns)
        has_text = any(isinstance(c, TextColumn) for c in spec.columns.values())
        specials = list(SPECIALS)
        if text is not None:
            specials[BOS] = text.bos or specials[BOS]
            specials[EOS] = text.eos or specials[EOS]
        symbols = [*specials, *(f"<d{d:02d}>" for d in range(BASE))]
        if has_text and text is not None:
            symbols += text.tokens()
        elif has_text:
            symbols += [f"<0x{b:02X}>" for b in range(256)]
        name_tokens = tuple(range(len(symbols), len(symbols) + len(column_names)))
        symbols += [f"<col:{n}>" for n in column_names]
        fixed = 2 + (len(column_names) if names else 0)  # <bos>, <eos>, one name token per column
        partial: list[ColumnCodec | None] = []
        for name, col in spec.columns.items():
            if isinstance(col, CategoricalColumn | BooleanColumn):
                labels: tuple[str, ...]
                if isinstance(col, BooleanColumn):
                    labels, boolean = ("false", "true"), True
                elif col.categories is None:
                    raise GeneratorError(f"column `{name}` has no declared categories; run DP discovery first")
                else:
                    labels, boolean = col.categories, False
                tokens = tuple(range(len(symbols), len(symbols) + len(labels)))
                symbols += [f"<{name}={label}>" for label in labels]
                partial.append(CategoryCodec(name=name, nullable=col.nullable, labels=labels, tokens=tokens,
                                             boolean=boolean))
                fixed += 1
            elif isinstance(col, TextColumn):
                partial.append(None)
            else:
                number = _number_codec(name, col)
                partial.append(number)
                fixed += number.width
        texts = [(n, c) for n, c in spec.columns.items() if isinstance(c, TextColumn)]
        budget = (context_length - fixed) // len(texts) - 1 if texts else 0
        if texts and budget < 1:
            raise SpecError(f"`generator.context_length` ({context_length}) must be > {fixed + 2 * len(texts)} "
                            "to fit one row with its text columns")
        if fixed > context_length:
            raise SpecError(f"`generator.context_length` ({context_length}) must be >= {fixed} to fit one row")
        text_iter = iter(texts)
        columns: list[ColumnCodec] = []
        for codec in partial:
            if codec is None:
                name, col = next(text_iter)
                # Bytes: up to 4 per character. BPE: a token holds at least one character of a text.
                cap = min(4 * col.max_length if text is None else col.max_length, budget)
                codec = TextCodec(name=name, nullable=col.nullable, max_chars=col.max_length, max_bytes=cap,
                                  bpe=text)
            columns.append(codec)
        max_length = 2 + sum(int(names) + c.max_tokens for c in columns)
        return cls(symbols=tuple(symbols), columns=tuple(columns), name_tokens=name_tokens, max_length=max_length,
                   names=names, text=text if has_text else None)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    @property
    def has_text(self) -> bool:
        return any(isinstance(c, TextCodec) for c in self.columns)

    def index(self, name: str) -> int:
        return [c.name for c in self.columns].index(name)

    def encode_cells(self, frame: pd.DataFrame) -> list[list[Cell]]:
        """Per column (declared order), per row: the value's tokens without the name token.

        Raises:
            GeneratorError: a category is outside the declared domain (names the column, never the value).
        """
        cells = []
        for codec in self.columns:
            try:
                cells.append(codec.encode(frame[codec.name]))
            except KeyError:
                raise GeneratorError(f"column `{codec.name}` has values outside its declared categories; "
                                     "validate the data against the spec first") from None
        return cells

    def assemble(self, cells: list[list[Cell]], row: int, order: list[int] | np.ndarray) -> list[int]:
        """The token sequence of ``row`` with its columns in ``order`` (indices into the declared order)."""
        seq = [BOS]
        for c in order:
            if self.names:
                seq.append(self.name_tokens[c])
            seq.extend(cells[c][row])
        seq.append(EOS)
        return seq

    def encode(self, frame: pd.DataFrame, orders: np.ndarray | None = None) -> list[list[int]]:
        """Token sequences of every row; ``orders[i]`` is row i's column order (default: declared)."""
        cells = self.encode_cells(frame)
        declared = list(range(len(self.columns)))
        return [self.assemble(cells, i, declared if orders is None else orders[i]) for i in range(len(frame))]

    def decode(self, sequences: list[list[int]] | np.ndarray, spec: ReleaseSpec,
               order: list[int] | tuple[int, ...] | None = None) -> pd.DataFrame:
        """Rows from token sequences, with the spec's columns and dtypes.

        With names, any column order is read; without, ``order`` (default: declared) says which is which.

        Raises:
            GeneratorError: a sequence is not a complete row (cannot happen for masked generation).
        """
        by_name = {tok: i for i, tok in enumerate(self.name_tokens)}
        fixed = list(range(len(self.columns)) if order is None else order)
        out: list[list[Any]] = [[] for _ in self.columns]
        for seq in sequences:
            seq = list(seq)
            seen = 0
            pos = 1
            while pos < len(seq) and seq[pos] != EOS and seen < len(fixed):
                c = by_name.get(seq[pos], -1) if self.names else fixed[seen]
                if c < 0:
                    raise GeneratorError("a generated sequence is not a valid row (unexpected token)")
                start = pos + 1 if self.names else pos
                end = _cell_end(self.columns[c], seq, start)
                out[c].append(self.columns[c].decode(tuple(seq[start:end])))
                seen += 1
                pos = end
            if seen != len(self.columns) or any(len(o) != len(out[0]) for o in out):
                raise GeneratorError("a generated sequence is not a valid row (missing or repeated column)")
        frame = pd.DataFrame({codec.name: pd.Series(values, dtype=object)
                              for codec, values in zip(self.columns, out, strict=True)})
        return conform(_typed(frame, self.columns), spec)


def _cell_end(codec: ColumnCodec, seq: list[int], start: int) -> int:
    if seq[start] == NULL:
        return start + 1
    if isinstance(codec, TextCodec):
        return seq.index(EOT, start) + 1
    return start + codec.max_tokens


def _typed(frame: pd.DataFrame, columns: tuple[ColumnCodec, ...]) -> pd.DataFrame:
    out = {}
    for codec in columns:
        values = frame[codec.name]
        if isinstance(codec, NumberCodec) and codec.kind == "datetime":
            out[codec.name] = pd.Series(pd.array([v if v is not None else None for v in values],
                                                 dtype="datetime64[us]"))
        elif isinstance(codec, NumberCodec):
            out[codec.name] = pd.Series(pd.array(values.tolist(), dtype="Int64" if codec.kind == "integer"
                                                 else "Float64"))
        elif isinstance(codec, CategoryCodec) and codec.boolean:
            out[codec.name] = pd.Series(pd.array(values.tolist(), dtype="boolean"))
        else:
            out[codec.name] = pd.Series(values.tolist(), dtype="str")
    return pd.DataFrame(out)
