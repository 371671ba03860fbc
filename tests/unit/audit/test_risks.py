"""Anonymeter-style risks and text copying on tiny hand-built frames with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from safesynth.audit.attacks import (
    attribute_inference,
    linkability,
    residual_success,
    singling_out,
    success_rate,
    text_copy,
)
from safesynth.audit.attacks.text_copy import copy_measures
from tests.helpers import make_spec

Z = 1.959963984540054  # two-sided 95%


def wilson(k: int, n: int) -> float:
    return (k + Z * Z / 2) / (n + Z * Z)


def risk(k_attack: int, k_control: int, n: int) -> float:
    a, c = wilson(k_attack, n), wilson(k_control, n)
    return (a - c) / (1 - c)


def test_success_rate_is_anonymeters_wilson_estimate():
    rate = success_rate(n_total=10, n_success=3)
    assert rate.value == pytest.approx((3 + Z * Z / 2) / (10 + Z * Z))
    assert rate.error == pytest.approx(Z / (10 + Z * Z) * math.sqrt(3 * 7 / 10 + Z * Z / 4))
    residual = residual_success(attack_rate=rate, control_rate=rate)
    assert residual.value == pytest.approx(0.0) and residual.error > 0


def test_success_rate_refuses_impossible_counts():
    with pytest.raises(ValueError, match="n_success"):
        success_rate(n_total=3, n_success=4)


def test_attribute_inference_finds_members_secrets_and_misses_the_controls(tmp_path):
    spec = make_spec(tmp_path, columns={
        "zip": {"type": "categorical", "categories": ["a", "b", "c", "d"]},
        "age": {"type": "integer", "min": 0, "max": 100},
        "disease": {"type": "categorical", "categories": ["flu", "cold"]},
    })
    members = pd.DataFrame({"zip": list("abcd"), "age": [10, 30, 50, 70],
                            "disease": ["flu", "cold", "flu", "cold"]})
    # Same quasi-identifiers, opposite secrets: the closest synthetic row always guesses wrong.
    non_members = members.assign(disease=["cold", "flu", "cold", "flu"])
    result = attribute_inference(synthetic=members.copy(), members=members, non_members=non_members,
                                 secret="disease", spec=spec, rng=np.random.default_rng(0))
    assert result.n_attacks == result.n_control == 4
    assert result.attack_rate.value == pytest.approx(wilson(4, 4))
    assert result.control_rate.value == pytest.approx(wilson(0, 4))
    assert result.risk.value == pytest.approx(risk(4, 0, 4))  # 0.6755
    assert result.risk.ci[0] <= result.risk.value <= result.risk.ci[1] <= 1.0


def test_attribute_inference_refuses_an_undeclared_secret(tmp_path):
    spec = make_spec(tmp_path)
    frame = pd.DataFrame({"age": [1]})
    with pytest.raises(ValueError, match="`secret`"):
        attribute_inference(synthetic=frame, members=frame, non_members=frame, secret="nope", spec=spec,
                            rng=np.random.default_rng(0))


def test_singling_out_counts_predicates_that_isolate_one_row(tmp_path):
    spec = make_spec(tmp_path, columns={
        "city": {"type": "categorical", "categories": ["x", "y", "z", "w"]},
        "age": {"type": "integer", "min": 0, "max": 100},
    })
    synthetic = pd.DataFrame({"city": ["x", "y", "y", "z", "z"], "age": pd.array([20, 40, 40, 60, 60], "Int64")})
    # Predicates from the synthetic rows: city == x, age <= 20, age >= 60, age == 20.
    members = pd.DataFrame({"city": ["x", "y", "z", "w"], "age": pd.array([20, 40, 60, 80], "Int64")})
    non_members = pd.DataFrame({"city": ["y", "y", "z", "w"], "age": pd.array([30, 40, 50, 90], "Int64")})
    result = singling_out(synthetic=synthetic, members=members, non_members=non_members, spec=spec,
                          rng=np.random.default_rng(0))
    assert result.n_attacks == 4
    # Members: city == x, age <= 20 and age == 20 single out one row (age >= 60 matches two).
    assert result.attack_rate.value == pytest.approx(wilson(3, 4))
    # Control: only age >= 60 (the 90-year-old).
    assert result.control_rate.value == pytest.approx(wilson(1, 4))
    assert result.risk.value == pytest.approx(risk(3, 1, 4))



def test_singling_out_counts_match_the_row_by_row_definition(tmp_path):
    # The per-column value counts give the same answer as matching each predicate against every row,
    # with nulls, datetimes, texts and baseline predicates drawn from null synthetic values.
    from safesynth.audit.attacks.singling_out import Predicate, _singled_out, univariate_predicates
    from tests.helpers import mixed_frame

    spec = make_spec(tmp_path)
    synthetic, frame = mixed_frame(300, seed=1), mixed_frame(300, seed=2)
    predicates = univariate_predicates(synthetic, spec=spec)
    predicates += [Predicate(column=c, op="==", value=synthetic[c].iloc[i])
                   for c in synthetic.columns for i in range(40)]
    assert any(p.op == "==" and pd.isna(p.value) for p in predicates)
    expected = sum(int(p.matches(frame).sum() == 1) for p in predicates)
    assert _singled_out(predicates, frame) == expected > 0

def test_linkability_links_members_through_their_copies_only(tmp_path):
    spec = make_spec(tmp_path, columns={
        "a": {"type": "integer", "min": 0, "max": 100},
        "b": {"type": "integer", "min": 0, "max": 100},
    })
    members = pd.DataFrame({"a": [10, 20, 30, 40], "b": [10, 20, 30, 40]})
    non_members = pd.DataFrame({"a": [10, 20, 30, 40], "b": [40, 30, 20, 10]})
    result = linkability(synthetic=members.copy(), members=members, non_members=non_members,
                         aux_columns=(["a"], ["b"]), spec=spec, rng=np.random.default_rng(0))
    assert result.attack_rate.value == pytest.approx(wilson(4, 4))
    assert result.control_rate.value == pytest.approx(wilson(0, 4))


def test_copy_measures_find_the_longest_copied_span():
    verbatim, overlap, span = copy_measures(["abcdefghijXYZ", "zzabcdefghijzz", "short"],
                                            ["zzabcdefghijzz"], n=8)
    assert verbatim.tolist() == [False, True, False]
    assert span[0] == pytest.approx(10 / 13)  # "abcdefghij": 3 consecutive 8-grams
    assert overlap[0] == pytest.approx(3 / 6)
    assert overlap[1] == span[1] == 1.0
    assert overlap[2] == span[2] == 0.0  # shorter than n and not verbatim


def test_text_copy_separates_copied_member_texts_from_the_control(tmp_path):
    spec = make_spec(tmp_path, columns={"note": {"type": "text", "max_length": 100}})
    members = pd.DataFrame({"note": ["the dress fits perfectly and the colour is lovely",
                                     "returned it because the zipper broke after one wash",
                                     "great for summer evenings by the sea"]}, dtype="str")
    non_members = pd.DataFrame({"note": ["too small in the shoulders, ordered a size up",
                                         "fabric feels cheap but the price was right",
                                         "my daughter wears it to school every week"]}, dtype="str")
    synthetic = pd.DataFrame({"note": ["the dress fits perfectly and the colour is lovely",  # verbatim
                                       "returned it because the zipper broke after two days",  # near
                                       "a nice jacket for cold mornings"]}, dtype="str")
    result = text_copy(synthetic=synthetic, members=members, non_members=non_members, column="note",
                       spec=spec, rng=np.random.default_rng(0))
    assert result.verbatim_members == pytest.approx(1 / 3) and result.verbatim_non_members == 0.0
    assert result.near_verbatim_members == pytest.approx(2 / 3) and result.near_verbatim_non_members == 0.0
    assert result.mean_overlap_members > 0.5 > result.mean_overlap_non_members
