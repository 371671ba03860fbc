"""Which columns the in-context generator makes, and the prompts it shows the model (no torch).

A prompt is a public instruction, then one line per private example (``<column>: <text>``), then
``<column>:`` and the text generated so far. The public prompt, whose top-k tokens are the candidate set,
is the same prompt with no example: a prompt whose subsample is empty *is* the public prompt.

Privacy:
    Nothing here reads private data except :func:`prompt_ids`, which formats the examples of one prompt;
    it drops whole examples from the end of that prompt only (a token cap), so one record still changes
    at most that prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from safesynth.errors import SpecError
from safesynth.spec import BooleanColumn, CategoricalColumn, InContextGeneratorSpec, ReleaseSpec, TextColumn

__all__ = ["InContextColumns", "example_line", "prompt_ids", "prompt_label", "prompt_labels", "prompt_text",
           "resolve_columns"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InContextColumns:
    """The generated text column, the conditioning column (or None) and every other column."""

    text: str
    condition: str | None
    others: tuple[str, ...]


def resolve_columns(spec: ReleaseSpec) -> InContextColumns:
    """The columns of an ``incontext`` generator, checked against the spec (reads no data).

    Raises:
        SpecError: no ``text_column`` and not exactly one text column, ``text_column`` not a text column, or
            ``condition_on`` not a categorical or boolean column.
    """
    gen = spec.generator
    if not isinstance(gen, InContextGeneratorSpec):
        raise SpecError(f"`generator.kind` ({gen.kind!r}) must be 'incontext' for the in-context generator")
    texts = [name for name, col in spec.columns.items() if isinstance(col, TextColumn)]
    text = gen.text_column
    if text is None:
        if len(texts) != 1:
            raise SpecError(f"`generator.text_column` must be set: the spec has {len(texts)} text columns, not 1")
        text = texts[0]
    elif text not in texts:
        raise SpecError(f"`generator.text_column` ({text!r}) must name a text column")
    condition = gen.condition_on
    if condition is not None:
        col = spec.columns.get(condition)
        if not isinstance(col, CategoricalColumn | BooleanColumn):
            raise SpecError(f"`generator.condition_on` ({condition!r}) must name a categorical or boolean column")
    others = tuple(name for name in spec.columns if name not in (text, condition))
    return InContextColumns(text=text, condition=condition, others=others)


def prompt_label(column: str, value: object) -> str:
    """How a prompt names its label group: ``<column> is <value>`` (``missing`` for null, booleans lower case)."""
    shown = "missing" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{column} is {shown}"


def prompt_labels(spec: ReleaseSpec, columns: InContextColumns) -> tuple[str | None, ...]:
    """Every label a prompt can name, from the declared domain of the condition column (None: no condition)."""
    if columns.condition is None:
        return (None,)
    col = spec.columns[columns.condition]
    values: list[object] = [False, True] if isinstance(col, BooleanColumn) else list(
        col.categories or ()) if isinstance(col, CategoricalColumn) else []
    if col.nullable:
        values.append(None)
    return tuple(prompt_label(columns.condition, v) for v in values)


def example_line(text: str, *, column: str, max_length: int) -> str:
    """One example as one line: whitespace (newlines included) collapsed, cut at ``max_length``."""
    return f"{column}: {' '.join(str(text).split())[:max_length]}\n"


def prompt_text(examples: Sequence[str], *, column: str, label: str | None) -> str:
    """The prompt with ``examples`` (already :func:`example_line`\\ s); no example: the public prompt."""
    about = f"`{column}` texts" if label is None else f"`{column}` texts of records whose {label}"
    return f"Examples of {about}, one per line.\n\n" + "".join(examples) + f"{column}:"


def prompt_ids(examples: Sequence[str], *, column: str, label: str | None, max_tokens: int,
               encode: Callable[[str], list[int]]) -> list[int]:
    """Token ids of the prompt with as many leading ``examples`` as fit in ``max_tokens``.

    Whole examples are dropped from the end until the prompt fits (the public prompt always does: it is
    checked by the caller).
    """
    keep = len(examples)
    while True:
        ids = encode(prompt_text(examples[:keep], column=column, label=label))
        if len(ids) <= max_tokens or keep == 0:
            return ids
        keep -= 1
