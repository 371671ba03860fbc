"""Calibration of sampled rows to DP marginals: raking weights, weighted selection, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from safesynth.errors import GeneratorError
from safesynth.generator.calibrate import MAX_WEIGHT, Calibration, Target
from safesynth.spec import parse_spec

COLUMNS = {
    "a": {"type": "categorical", "categories": ["p", "q", "r", "s"]},
    "b": {"type": "categorical", "categories": ["w", "x"], "nullable": True},
    "n": {"type": "integer", "min": 0, "max": 999},
    "t": {"type": "text", "max_length": 5},
}


def _spec(tmp_path):
    return parse_spec({
        "dataset": "unit-cal", "source": "data.csv", "columns": COLUMNS,
        "privacy": {"epsilon": 1.0, "delta": 1e-5, "lifetime_epsilon": 10.0},
        "generator": {"kind": "marginals"}, "sampling": {"rows": 10, "seed": 0},
        "publish": {"target": "releases"},
    }, base_dir=tmp_path)


def _candidates(n: int, seed: int = 0) -> pd.DataFrame:
    """``a`` uniform, ``b`` independent of it (a third null), ``n`` uniform, ``t`` any text."""
    rng = np.random.default_rng(seed)
    b = pd.Series(rng.choice(["w", "x", None], n), dtype="str")
    return pd.DataFrame({"a": pd.Series(rng.choice(list("pqrs"), n), dtype="str"), "b": b,
                         "n": pd.array(rng.integers(0, 1000, n), dtype="Int64"),
                         "t": pd.Series(["abc"] * n, dtype="str")})


#: a: (0.4, 0.3, 0.2, 0.1); (a, b): b = w for p and q, x for r and s, never null.
ONE = np.array([0.4, 0.3, 0.2, 0.1])
PAIR = np.array([[0.4, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.1, 0.0]])


def _shares(frame: pd.DataFrame, column: str, values: list[str | None]) -> np.ndarray:
    col = frame[column].astype(object).where(frame[column].notna(), None)
    return np.array([(col == v).mean() if v is not None else col.isna().mean() for v in values])


def test_raking_pulls_one_and_two_way_marginals_to_the_targets(tmp_path):
    """40,000 candidates, 5,000 kept: shares land within 0.03 of the targets (sampling sd < 0.01); a zero
    target keeps the share its weight floor (1/MAX_WEIGHT) leaves, about 1/24 here."""
    spec = _spec(tmp_path)
    cal = Calibration(bins=16, oversample=4, targets=(Target(columns=(0,), table=ONE),
                                                      Target(columns=(0, 1), table=PAIR)))
    before = _candidates(40_000)
    kept = cal.select(before, 5_000, spec=spec, seed=3)
    assert len(kept) == 5_000 and list(kept.columns) == list(before.columns)
    assert np.abs(_shares(before, "a", list("pqrs")) - 0.25).max() < 0.02  # uncalibrated: uniform
    assert np.abs(_shares(kept, "a", list("pqrs")) - ONE).max() < 0.03
    pw = ((kept["a"].isin(["p", "q"])) & (kept["b"] == "w")).mean()
    rx = ((kept["a"].isin(["r", "s"])) & (kept["b"] == "x")).mean()
    assert pw + rx > 0.9  # uncalibrated: 1/3
    assert 0.01 < kept["b"].isna().mean() < 0.07  # null never in the target: thinned, not erased
    # distinct candidates only (drawn without replacement), deterministic for the seed
    assert not kept.index.duplicated().any()
    pd.testing.assert_frame_equal(kept, cal.select(before, 5_000, spec=spec, seed=3))
    assert not kept.equals(cal.select(before, 5_000, spec=spec, seed=4))


def test_weights_are_bounded_and_a_matching_pool_keeps_uniform_weights(tmp_path):
    spec = _spec(tmp_path)
    frame = _candidates(4_000)
    cells = Calibration(bins=16, oversample=2, targets=()).cells(frame, spec)
    skewed = Calibration(bins=16, oversample=2, targets=(Target(columns=(0,), table=np.array([0.97, 0.01, 0.01,
                                                                                              0.01])),))
    w = skewed.weights(cells)
    assert w.max() <= MAX_WEIGHT and w.min() >= 1 / MAX_WEIGHT and w.mean() == pytest.approx(1.0, rel=0.2)
    observed = np.bincount(cells[0], minlength=4) / len(frame)
    flat = Calibration(bins=16, oversample=2, targets=(Target(columns=(0,), table=observed),))
    assert np.allclose(flat.weights(cells), 1.0)


def test_save_and_load_round_trip_and_a_damaged_file_is_a_generator_error(tmp_path):
    cal = Calibration(bins=7, oversample=3, targets=(Target(columns=(0,), table=ONE),
                                                     Target(columns=(0, 1), table=PAIR)))
    assert Calibration.load(tmp_path) is None
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back is not None and (back.bins, back.oversample) == (7, 3)
    assert [t.columns for t in back.targets] == [(0,), (0, 1)]
    assert all(np.array_equal(a.table, b.table) for a, b in zip(back.targets, cal.targets, strict=True))
    (tmp_path / "calibration.npz").write_bytes(b"not a zip")
    with pytest.raises(GeneratorError, match="not a saved calibration"):
        Calibration.load(tmp_path)


def test_asking_for_all_candidates_returns_them_unweighted(tmp_path):
    frame = _candidates(10)
    cal = Calibration(bins=16, oversample=2, targets=(Target(columns=(0,), table=ONE),))
    pd.testing.assert_frame_equal(cal.select(frame, 10, spec=_spec(tmp_path), seed=0), frame)
