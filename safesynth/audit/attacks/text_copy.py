"""Verbatim and near-verbatim copying of texts: generated texts against training vs holdout texts.

For each generated text we measure, against a corpus of texts:

- **verbatim**: the text equals a corpus text;
- **n-gram overlap**: the share of its character ``n``-grams (default 8) that occur in the corpus;
- **longest copied span**: the longest stretch of the text covered by consecutive ``n``-grams that all
  occur in the corpus, as a share of its length. When a common substring of length ``L >= n`` exists it
  yields ``L - n + 1`` consecutive hits, so this is never below the longest common substring; it can
  exceed it when the hits come from different corpus texts (an upper bound: it errs on the cautious side).

Everything is measured twice, against the members' texts (training) and against as many non-members'
texts (holdout, the control): the excess of the member rates over the control rates is what the generator
copied from its training data rather than what is common in the language. ``n``-grams are hashed to
64-bit integers (a polynomial hash, vectorised) and looked up in a sorted array, so the cost is
O(total characters * log), never a quadratic string comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from safesynth.audit.attacks.inference import equal_samples
from safesynth.spec import ReleaseSpec, TextColumn

__all__ = ["TextCopyResult", "copy_measures", "ngram_hashes", "text_copy"]

_BASE = np.uint64(1_000_003)


@dataclass(frozen=True, slots=True, kw_only=True)
class TextCopyResult:
    """Copy rates of generated texts against member texts and against non-member (control) texts.

    Exact figures on private rows: restricted zone only.
    """

    column: str
    ngram: int
    near_threshold: float
    generated: int
    corpus_texts: int
    verbatim_members: float
    verbatim_non_members: float
    near_verbatim_members: float
    near_verbatim_non_members: float
    mean_overlap_members: float
    mean_overlap_non_members: float
    mean_span_members: float
    mean_span_non_members: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit polynomial hashes of the character ``n``-grams of ``text`` (empty when shorter than ``n``)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) < n:
        return np.zeros(0, dtype=np.uint64)
    powers = _BASE ** np.arange(n - 1, -1, -1, dtype=np.uint64)  # wraps modulo 2^64, on purpose
    return np.asarray(sliding_window_view(codes, n) @ powers, dtype=np.uint64)


def _index(texts: list[str], n: int) -> np.ndarray:
    parts = [ngram_hashes(t, n) for t in texts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _longest_run(hits: np.ndarray) -> int:
    if not hits.any():
        return 0
    padded = np.r_[False, hits, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def copy_measures(generated: list[str], corpus: list[str], *, n: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per generated text: ``(verbatim, overlap, span)`` against ``corpus``.

    ``overlap`` is the share of the text's ``n``-grams found in the corpus (for a text shorter than ``n``:
    1 when verbatim, else 0); ``span`` the longest copied span as a share of the text's length (see the
    module docstring).
    """
    exact = set(corpus)
    index = _index(corpus, n)
    verbatim = np.array([t in exact for t in generated], dtype=bool)
    overlap = np.zeros(len(generated))
    span = np.zeros(len(generated))
    for i, text in enumerate(generated):
        h = ngram_hashes(text, n)
        if len(h) == 0:
            overlap[i] = span[i] = float(verbatim[i])
            continue
        hits = index[np.minimum(np.searchsorted(index, h), len(index) - 1)] == h if len(index) else h != h
        overlap[i] = float(hits.mean())
        run = _longest_run(hits)
        span[i] = (run + n - 1) / len(text) if run else 0.0
    return verbatim, overlap, span


def text_copy(
    *,
    synthetic: pd.DataFrame,
    members: pd.DataFrame,
    non_members: pd.DataFrame,
    column: str,
    spec: ReleaseSpec,
    rng: np.random.Generator,
    ngram: int = 8,
    near_threshold: float = 0.5,
    max_rows: int | None = 5_000,
) -> TextCopyResult:
    """Copy rates of the generated texts in ``column``: members' texts vs as many non-members' texts.

    A generated text is *near-verbatim* when its longest copied span covers at least ``near_threshold``
    of it. Null texts are skipped.

    Raises:
        ValueError: ``column`` is not a declared text column, ``ngram < 1``, or a side has no rows.
    """
    if not isinstance(spec.columns.get(column), TextColumn):
        raise ValueError(f"`column` ({column}) must be a declared text column")
    if ngram < 1:
        raise ValueError(f"`ngram` ({ngram}) must be >= 1")
    mem, non = equal_samples(members, non_members, rng=rng, max_rows=max_rows)

    def texts(frame: pd.DataFrame) -> list[str]:
        return [str(t) for t in frame[column].dropna()]

    generated = texts(synthetic)
    if max_rows is not None and len(generated) > max_rows:
        generated = [generated[i] for i in rng.choice(len(generated), max_rows, replace=False)]
    v_mem, o_mem, s_mem = copy_measures(generated, texts(mem), n=ngram)
    v_non, o_non, s_non = copy_measures(generated, texts(non), n=ngram)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else 0.0

    return TextCopyResult(
        column=column, ngram=ngram, near_threshold=near_threshold, generated=len(generated),
        corpus_texts=len(mem), verbatim_members=mean(v_mem), verbatim_non_members=mean(v_non),
        near_verbatim_members=mean(s_mem >= near_threshold), near_verbatim_non_members=mean(s_non >= near_threshold),
        mean_overlap_members=mean(o_mem), mean_overlap_non_members=mean(o_non),
        mean_span_members=mean(s_mem), mean_span_non_members=mean(s_non))
