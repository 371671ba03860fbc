"""DP discovery of undeclared domains on small hand-made frames.

Assertions that depend on OpenDP's (unseedable) noise use margins so wide that a failure has
probability below 1e-7; the rest use SeededNoise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from safesynth.errors import DataError, SpecError
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.discovery import (
    check_discovery,
    discover_bounds,
    discover_categories,
    discover_domains,
    dp_row_count,
    laplace_tail,
    threshold_for,
    undeclared_columns,
)
from safesynth.privacy.noise import OpenDPNoise, SeededNoise
from safesynth.privacy.planner import StageBudget, plan_budget
from safesynth.spec import parse_spec

NOISES = [pytest.param(OpenDPNoise(), id="opendp"), pytest.param(SeededNoise(7), id="seeded")]


def make_spec(columns, *, epsilon=2.0, delta=1e-6, discovery=0.5):
    return parse_spec({
        "dataset": "toy",
        "source": "toy.csv",
        "columns": columns,
        "privacy": {"epsilon": epsilon, "delta": delta, "lifetime_epsilon": 10.0,
                    "allocation": {"discovery": discovery}},
        "sampling": {"rows": 100},
        "publish": {"target": "out"},
    })


def categorical_frame(rare_count: int = 3) -> pd.Series:
    common = ["alpha"] * 3000 + ["beta"] * 2000 + ["gamma"] * 500
    rare = [f"rare-{i}" for i in range(20) for _ in range(rare_count)]
    return pd.Series(common + rare + [None] * 10, dtype="str")


# --------------------------------------------------------------------------------------- categories


@pytest.mark.parametrize("noise", NOISES)
def test_rare_categories_below_the_threshold_are_never_discovered(noise):
    # b = 1, delta = 1e-9: threshold 22; a value seen 3 times passes with probability e^-19/(1+e^-1)
    # ~ 4e-9 (x20 values), a value seen 500 times fails with probability ~ e^-478.
    categories, spend = discover_categories(categorical_frame(), epsilon=1.0, delta=1e-9, max_categories=50,
                                            noise=noise, stage="discovery.c")
    assert categories == ("alpha", "beta", "gamma")
    assert spend.detail["threshold"] == 22
    assert (spend.epsilon, spend.delta, spend.extra_delta) == (1.0, 1e-9, 1e-9)
    assert spend.secure_noise is noise.secure
    assert spend.mechanism == "laplace_threshold"


def test_max_categories_keeps_the_most_frequent():
    values = pd.Series([c for c, n in zip("abcdef", [1000, 900, 800, 700, 600, 500], strict=True)
                        for _ in range(n)])
    categories, _ = discover_categories(values, epsilon=1.0, delta=1e-9, max_categories=3, noise=OpenDPNoise(),
                                        stage="s")
    assert categories == ("a", "b", "c")


def test_threshold_is_the_least_integer_meeting_delta():
    for scale, delta in [(1.0, 1e-9), (10.0, 1e-7), (0.3, 1e-3), (57.0, 2e-8)]:
        m = threshold_for(scale=scale, delta=delta)
        assert laplace_tail(m, scale=scale) <= delta
        assert m == 1 or laplace_tail(m - 1, scale=scale) > delta


@pytest.mark.slow
def test_threshold_delta_is_the_release_rate_of_a_value_seen_once():
    # 100k distinct values, each seen once: each must be released with probability exactly the tail
    # P(Z >= tau - 1) <= delta. z-test at alpha 1e-6 (|z| < 4.89).
    n, scale, delta = 100_000, 1.0, 0.05
    values = pd.Series([f"v{i}" for i in range(n)])
    categories, spend = discover_categories(values, epsilon=1 / scale, delta=delta, max_categories=n,
                                            noise=OpenDPNoise(), stage="s")
    tau = spend.detail["threshold"]
    rate = laplace_tail(tau - 1, scale=scale)
    assert rate <= delta
    sd = math.sqrt(rate * (1 - rate) / n)
    assert abs(len(categories) / n - rate) < 4.89 * sd
    # OpenDP 0.16's make_laplace_threshold reports e^(-tau/b)/(1+e^(-1/b)) for the same mechanism:
    # smaller than the measured rate by e^(1/b) (opendp/opendp#2922); ours is the measured one.
    opendp_reported = math.exp(-tau / scale) / (1 + math.exp(-1 / scale))
    assert len(categories) / n - 4.89 * sd > opendp_reported


def test_category_discovery_needs_delta():
    with pytest.raises(ValueError, match="delta"):
        discover_categories(categorical_frame(), epsilon=1.0, delta=0.0, max_categories=5, noise=SeededNoise(0),
                            stage="s")


# ------------------------------------------------------------------------------------------- bounds


def test_integer_bounds_contain_the_bulk_and_drop_a_lone_outlier():
    ages = pd.Series(list(np.resize(np.arange(18, 91), 5000)) + [10**9], dtype="Int64")
    bounds, spend = discover_bounds(ages, epsilon=1.0, noise=SeededNoise(3), integer=True, stage="b")
    assert bounds == (16.0, 90.0)  # grid bins [16, 20) and [77, 91)
    assert (spend.epsilon, spend.delta, spend.extra_delta) == (1.0, 0.0, 0.0)
    assert spend.detail["bins"] > 300


@pytest.mark.parametrize("noise", NOISES)
def test_float_bounds_contain_the_bulk(noise):
    rng = np.random.default_rng(0)
    values = pd.Series(rng.normal(-50.0, 10.0, 5000))
    (lo, hi), _ = discover_bounds(values, epsilon=1.0, noise=noise, integer=False, stage="b")
    lo_q, hi_q = values.quantile([0.005, 0.995])
    assert lo <= lo_q and hi >= hi_q
    assert lo > -200 and hi < 0  # and nowhere near the grid's +-2^50


def test_declared_side_is_kept_and_only_the_other_side_discovered():
    values = pd.Series(np.resize(np.arange(0, 101), 3000))
    (lo, hi), _ = discover_bounds(values, epsilon=1.0, noise=SeededNoise(1), integer=True, stage="b", lower=0)
    assert lo == 0 and hi >= 100
    (lo, hi), _ = discover_bounds(values, epsilon=1.0, noise=SeededNoise(1), integer=True, stage="b", upper=64)
    assert lo <= 0 and hi == 64


def test_bounds_of_a_too_small_column_are_none_not_the_data():
    (bounds, spend) = discover_bounds(pd.Series([5, 6, 7]), epsilon=0.1, noise=SeededNoise(0), integer=True,
                                      stage="b")
    assert bounds is None
    assert spend.epsilon == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------- row count


def test_dp_row_count_is_noisy_non_negative_and_accounted():
    count, spend = dp_row_count(10_000, epsilon=1.0, noise=OpenDPNoise())
    assert abs(count - 10_000) <= 40  # P(|Z| > 40) ~ 2e-18 at scale 1
    assert (spend.epsilon, spend.delta, spend.secure_noise) == (1.0, 0.0, True)
    assert dp_row_count(0, epsilon=0.01, noise=SeededNoise(0))[0] >= 0
    assert dp_row_count(500, epsilon=0.5, noise=SeededNoise(4)) == dp_row_count(500, epsilon=0.5,
                                                                                 noise=SeededNoise(4))


def test_dp_row_count_gaussian_fits_its_budget():
    _, spend = dp_row_count(1000, epsilon=0.5, delta=1e-6, mechanism="gaussian", noise=SeededNoise(0))
    assert spend.epsilon <= 0.5 and spend.delta == 1e-6
    with pytest.raises(ValueError, match="delta"):
        dp_row_count(1000, epsilon=0.5, mechanism="gaussian", noise=SeededNoise(0))


# ----------------------------------------------------------------------------------- whole spec


COLUMNS = {
    "city": {"type": "categorical", "max_categories": 10},
    "age": {"type": "integer"},
    "income": {"type": "float", "min": 0.0, "precision": 1},
    "score": {"type": "float", "min": 0.0, "max": 1.0},
    "member": {"type": "boolean"},
}


def toy_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 4000
    return pd.DataFrame({
        "city": rng.choice(["Oslo", "Lima", "Pune"], n).tolist()[:-1] + ["Atlantis"],
        "age": rng.integers(20, 60, n),
        "income": rng.lognormal(10, 0.5, n),
        "score": rng.random(n),
        "member": rng.random(n) < 0.5,
    })


def test_discover_domains_fills_every_undeclared_domain_and_records_spends():
    spec = make_spec(COLUMNS)
    stage = plan_budget(spec).stage("discovery")
    account = ReleaseAccount(delta=spec.privacy.delta)
    found = discover_domains(toy_frame(), spec=spec, stage=stage, account=account, noise=SeededNoise(5))
    assert undeclared_columns(spec) == ["city", "age", "income"]
    assert undeclared_columns(found) == []
    assert list(found.columns) == list(spec.columns)
    assert found.columns["city"].categories == ("Lima", "Oslo", "Pune")
    frame = toy_frame()
    assert found.columns["age"].min <= 20 and found.columns["age"].max >= 59
    assert found.columns["income"].min == 0.0
    # Sparse tails are clamped by design; the bulk (here >= 98% of rows at epsilon 1/3) is inside.
    assert (frame["income"] <= found.columns["income"].max).mean() >= 0.98
    assert found.columns["income"].max == round(found.columns["income"].max, 1)  # outward to precision
    assert found.columns["score"] == spec.columns["score"]
    assert spec.columns["city"].categories is None  # the input spec is untouched
    assert [s.stage for s in account.spends] == ["discovery.city", "discovery.age", "discovery.income"]
    assert math.fsum(s.epsilon for s in account.spends) <= stage.epsilon
    assert math.fsum(s.delta for s in account.spends) <= stage.delta
    assert all(s.secure_noise is False for s in account.spends)
    assert account.spends[0].detail["column"] == "city"
    assert account.epsilon <= stage.epsilon


def test_fully_declared_spec_spends_nothing():
    spec = make_spec({"score": {"type": "float", "min": 0.0, "max": 1.0}}, discovery=0.0)
    account = ReleaseAccount(delta=1e-6)
    stage = StageBudget(name="discovery", fraction=0.0, epsilon=0.0, delta=0.0)
    assert discover_domains(toy_frame(), spec=spec, stage=stage, account=account, noise=SeededNoise(0)) is spec
    assert account.spends == []


def test_category_discovery_without_delta_fails_before_reading_data():
    spec = make_spec(COLUMNS, delta=0.0)
    stage = plan_budget(spec).stage("discovery")
    with pytest.raises(SpecError, match=r"needs `privacy.delta` > 0"):
        check_discovery(spec, stage)
    with pytest.raises(SpecError):
        discover_domains(pd.DataFrame(), spec=spec, stage=stage, account=ReleaseAccount(delta=0.0),
                         noise=SeededNoise(0))


def test_failed_discovery_names_the_column_not_its_values_and_keeps_the_spend():
    spec = make_spec({"secret": {"type": "categorical"}}, epsilon=0.5, discovery=0.2)
    stage = plan_budget(spec).stage("discovery")
    account = ReleaseAccount(delta=1e-6)
    frame = pd.DataFrame({"secret": ["Jane Roe's diagnosis"] * 5})
    with pytest.raises(DataError) as info:
        discover_domains(frame, spec=spec, stage=stage, account=account, noise=SeededNoise(0))
    assert "`secret`" in str(info.value)
    assert "Jane" not in str(info.value)
    assert [s.stage for s in account.spends] == ["discovery.secret"]


def test_missing_column_is_a_data_error():
    spec = make_spec(COLUMNS)
    with pytest.raises(DataError, match="missing"):
        discover_domains(pd.DataFrame({"age": [1]}), spec=spec, stage=plan_budget(spec).stage("discovery"),
                         account=ReleaseAccount(delta=1e-6), noise=SeededNoise(0))
