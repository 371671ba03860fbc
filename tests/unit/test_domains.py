"""Resolved column domains: read back as declared, or an InternalError (never a silent None)."""

from __future__ import annotations

import pandas as pd
import pytest

from safesynth.audit.attacks import featurize
from safesynth.domains import bounds_of, categories_of
from safesynth.errors import InternalError
from safesynth.spec import CategoricalColumn, FloatColumn, IntegerColumn
from tests.helpers import make_spec


def test_bounds_and_categories_of_resolved_columns():
    assert bounds_of(IntegerColumn(type="integer", min=17, max=90)) == (17, 90)
    assert bounds_of(FloatColumn(type="float", min=0.5, max=2.0)) == (0.5, 2.0)
    assert categories_of(CategoricalColumn(type="categorical", categories=["a", "b"])) == ("a", "b")


@pytest.mark.parametrize("col", [IntegerColumn(type="integer"), IntegerColumn(type="integer", min=0),
                                 FloatColumn(type="float", max=1.0)])
def test_bounds_of_refuses_unresolved_bounds(col):
    with pytest.raises(InternalError, match="without resolved bounds"):
        bounds_of(col)


def test_categories_of_refuses_unresolved_categories():
    with pytest.raises(InternalError, match="without resolved categories"):
        categories_of(CategoricalColumn(type="categorical"))


def test_attack_features_fail_closed_on_an_unresolved_column(tmp_path):
    # model_copy skips validation: a spec as it would look if discovery had been skipped by a bug.
    spec = make_spec(tmp_path).model_copy(update={"columns": {"n": IntegerColumn(type="integer")}})
    with pytest.raises(InternalError):
        featurize(pd.DataFrame({"n": pd.array([1, 2], dtype="Int64")}), spec)
