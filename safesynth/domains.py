"""Column domains as code past DP discovery reads them: known, or an internal error.

A spec may leave a column's bounds or categories undeclared; DP discovery fills them in before any
generator or attack runs (:class:`safesynth.stages.ResolvedSpec` checks it). Code downstream reads those
domains through these accessors, which raise :class:`~safesynth.errors.InternalError` rather than
``assert``: a missing bound fails closed even under ``python -O``.
"""

from __future__ import annotations

from typing import overload

from safesynth.errors import InternalError
from safesynth.spec import CategoricalColumn, FloatColumn, IntegerColumn

__all__ = ["bounds_of", "categories_of"]


@overload
def bounds_of(col: IntegerColumn) -> tuple[int, int]: ...


@overload
def bounds_of(col: FloatColumn) -> tuple[float, float]: ...


def bounds_of(col: IntegerColumn | FloatColumn) -> tuple[float, float]:
    """``(min, max)`` of a numeric column whose domain has been resolved.

    Raises:
        InternalError: a bound is still undeclared (discovery did not run: a bug, never a user error).
    """
    if col.min is None or col.max is None:
        raise InternalError(f"a `{col.type}` column reached a generator or attack without resolved bounds")
    return col.min, col.max


def categories_of(col: CategoricalColumn) -> tuple[str, ...]:
    """The categories of a categorical column whose domain has been resolved.

    Raises:
        InternalError: the categories are still undeclared (discovery did not run: a bug).
    """
    if col.categories is None:
        raise InternalError("a categorical column reached a generator or attack without resolved categories")
    return col.categories
