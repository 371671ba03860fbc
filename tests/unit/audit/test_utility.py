"""Utility metrics on hand-computed tiny examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from safesynth.audit.utility import correlation_difference, marginal_tvd, pairwise_tvd, tstr, tstr_vs_trtr
from tests.helpers import make_spec


def test_marginal_tvd_by_hand(tmp_path):
    # 20 bins over [0, 20]: each integer value is its own bin.
    spec = make_spec(tmp_path, columns={"c": {"type": "categorical", "categories": ["a", "b"]},
                                        "x": {"type": "integer", "min": 0, "max": 20}})
    real = pd.DataFrame({"c": ["a", "a", "b", "b"], "x": pd.array([0, 0, 1, 1], "Int64")})
    synthetic = pd.DataFrame({"c": ["a", "a", "a", "b"], "x": pd.array([0, 1, 1, 1], "Int64")})
    out = marginal_tvd(real, synthetic, spec)
    assert out["tvd_1way"] == pytest.approx(0.25)  # both columns: |0.5 - 0.75| + |0.5 - 0.25|, halved
    # Pairs: real (a,0) 1/2, (b,1) 1/2; synthetic (a,0) 1/4, (a,1) 1/2, (b,1) 1/4 -> (1/4 + 1/2 + 1/4) / 2.
    assert out["tvd_2way"] == out["tvd_2way_max"] == pytest.approx(0.5)
    assert out["tvd_1way_by_column"] == {"c": 0.25, "x": 0.25}


def test_correlation_difference_by_hand(tmp_path):
    spec = make_spec(tmp_path, columns={"x": {"type": "integer", "min": 0, "max": 10},
                                        "y": {"type": "float", "min": 0, "max": 10},
                                        "k": {"type": "integer", "min": 0, "max": 10}})
    real = pd.DataFrame({"x": [1, 2, 3, 4], "y": [1.0, 2.0, 3.0, 4.0], "k": [5, 5, 5, 5]})
    synthetic = pd.DataFrame({"x": [1, 2, 3, 4], "y": [4.0, 3.0, 2.0, 1.0], "k": [5, 5, 5, 5]})
    out = correlation_difference(real, synthetic, spec)
    assert dict(((a, b), d) for a, b, d in out.pairs) == pytest.approx({("x", "y"): 2.0, ("x", "k"): 0.0,
                                                                        ("y", "k"): 0.0})
    assert out.max_abs == pytest.approx(2.0) and out.mean_abs == pytest.approx(2.0 / 3)


def test_tstr_equals_trtr_when_the_synthetic_rows_are_the_training_rows():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 300)
    frame = pd.DataFrame({"x": x, "label": np.where(x + rng.normal(0, 0.1, 300) > 0.5, "yes", "no")})
    train, test = frame.iloc[:200], frame.iloc[200:]
    same = tstr_vs_trtr(synthetic=train, train=train, test=test, target="label", positive="yes")
    assert same.roc_auc_ratio == pytest.approx(1.0) and same.trtr_roc_auc > 0.9
    # A synthetic table with one class teaches nothing: chance AUC, without fitting a model.
    assert tstr(train.assign(label="no"), test, target="label", positive="yes")["roc_auc"] == 0.5


def test_pairwise_tvd_holds_each_pair_and_averages_to_the_2way_tvd(tmp_path):
    spec = make_spec(tmp_path, columns={"c": {"type": "categorical", "categories": ["a", "b"]},
                                        "x": {"type": "integer", "min": 0, "max": 20},
                                        "note": {"type": "text", "max_length": 10}})
    real = pd.DataFrame({"c": ["a", "a", "b", "b"], "x": pd.array([0, 0, 1, 1], "Int64"), "note": ["t"] * 4})
    synthetic = pd.DataFrame({"c": ["a", "a", "a", "b"], "x": pd.array([0, 1, 1, 1], "Int64"), "note": ["u"] * 4})
    pairs = pairwise_tvd(real, synthetic, spec)
    assert pairs == pytest.approx({("c", "x"): 0.5})  # text columns have no marginals
    assert marginal_tvd(real, synthetic, spec)["tvd_2way"] == pytest.approx(np.mean(list(pairs.values())))
