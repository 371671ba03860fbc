"""The aim and mst generators (OpenDP's AIM and MST): spec refusals, calibration, fit, save/load, sampling.

OpenDP draws AIM's and MST's noise from its own secure sampler, which cannot be seeded: the fitted tests
below run on fresh noise. Each states why its assert holds with overwhelming probability at its budget.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dp_accounting import dp_event

from safesynth.errors import SpecError
from safesynth.generator import get_backend
from safesynth.generator.mbi import calibrate_rho, make_measurement, mst_rho, zcdp_epsilon
from safesynth.privacy import ReleaseAccount, SeededNoise, plan_budget
from safesynth.sampling.cluster import worker_modules
from safesynth.spec import MSTGeneratorSpec
from tests.helpers import make_spec, rows_valid

ROWS = 400
COLUMNS = {
    "dept": {"type": "categorical", "categories": ["cardio", "neuro", "ortho"]},
    "smoker": {"type": "boolean"},
    "age": {"type": "integer", "min": 18, "max": 90},
    "score": {"type": "float", "min": 0, "max": 10, "precision": 1, "nullable": True},
}


def table(seed: int = 0) -> pd.DataFrame:
    """Smokers are (almost) exactly the cardio patients: a strong 2-way correlation; score is 20% null."""
    rng = np.random.default_rng(seed)
    dept = rng.choice(["cardio", "neuro", "ortho"], ROWS)
    smoker = (dept == "cardio") ^ (rng.random(ROWS) < 0.03)
    score = pd.array(np.round(rng.uniform(0, 10, ROWS), 1), dtype="Float64")
    score[rng.random(ROWS) < 0.2] = pd.NA
    return pd.DataFrame({"dept": pd.Series(dept, dtype="str"), "smoker": pd.array(smoker, dtype="boolean"),
                         "age": pd.array(rng.integers(18, 91, ROWS), dtype="Int64"), "score": score})


def spec_for(tmp_path: Path, generator: dict, **privacy):
    return make_spec(tmp_path, columns=COLUMNS, generator=generator,
                     privacy={"epsilon": 20.0, "delta": 1e-6, "lifetime_epsilon": 100.0, **privacy})


def fit(spec, frame):
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    model = get_backend(spec.generator.kind).fit(frame, spec=spec, plan=plan_budget(spec), account=account,
                                                 noise=SeededNoise(0), workdir=None)
    return model, account


# ------------------------------------------------------------------------------------- no data needed


@pytest.mark.parametrize("kind", ["aim", "mst"])
def test_spec_refuses_text_columns_and_zero_delta(tmp_path, kind):
    with pytest.raises(SpecError, match=rf"`generator.kind` \({kind}\) cannot model text columns \(\['note'\]\)"):
        make_spec(tmp_path, generator={"kind": kind})  # MIXED_COLUMNS holds the text column `note`
    with pytest.raises(SpecError, match=r"`privacy.delta` \(0\) must be > 0"):
        spec_for(tmp_path, {"kind": kind}, delta=0.0)
    # OpenDP's MST divides its selection budget by columns - 1: one column is refused before any budget
    with pytest.raises(SpecError, match=rf"`generator.kind` \({kind}\) models pairs of columns"):
        make_spec(tmp_path, generator={"kind": kind}, columns={"age": {"type": "integer", "min": 0, "max": 9}})


def test_spec_reads_the_algorithm_knobs_with_defaults(tmp_path):
    aim = spec_for(tmp_path, {"kind": "aim", "rounds": 5}).generator
    assert (aim.bins, aim.queries, aim.max_size, aim.rounds, aim.measure_split) == (16, 3, 80.0, 5, 0.9)
    mst = spec_for(tmp_path, {"kind": "mst", "num_selections": 2}).generator
    assert (mst.bins, mst.num_selections, mst.oneway_split, mst.anchor, mst.anchor_share) == (16, 2, None, None, 0.5)
    with pytest.raises(SpecError, match="generator.max_size"):
        spec_for(tmp_path, {"kind": "aim", "max_size": 0})


@pytest.mark.parametrize("kind", ["aim", "mst"])
def test_spec_refuses_an_anchor_that_is_not_a_declared_column(tmp_path, kind):
    with pytest.raises(SpecError, match=r"`generator.anchor` \('income'\) must be one of the declared columns"):
        spec_for(tmp_path, {"kind": kind, "anchor": "income"})
    with pytest.raises(SpecError, match="generator.anchor_share"):
        spec_for(tmp_path, {"kind": kind, "anchor": "dept", "anchor_share": 1.0})


def test_backends_are_registered_and_workers_import_them(tmp_path):
    for kind in ("aim", "mst"):
        assert get_backend(kind).kind == kind
        assert worker_modules(spec_for(tmp_path, {"kind": kind}))[1] == "safesynth.generator.mbi"


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-6), (1.0, 1e-5), (4.0, 1e-7), (20.0, 1e-6)])
def test_calibrated_rho_meets_epsilon_by_opendps_map_and_is_tight(epsilon, delta):
    rho = calibrate_rho(epsilon=epsilon, delta=delta)
    import opendp.prelude as dp

    cheap = dp.c.make_adaptive_composition(dp.vector_domain(dp.atom_domain(T=dp.u32)), dp.symmetric_distance(),
                                           dp.zero_concentrated_divergence(), d_in=1, d_mids=[rho])
    assert zcdp_epsilon(cheap, d_in=1, delta=delta) <= epsilon  # never overshoots
    assert zcdp_epsilon(cheap, d_in=1, delta=delta) >= epsilon * (1 - 1e-6)  # tight
    # OpenDP's conversion is at least as tight as the classic rho + 2 sqrt(rho log(1/delta)) (Bun-Steinke).
    assert epsilon <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


def test_mst_rho_lowers_a_rho_whose_selection_shares_overflow_by_one_ulp():
    gen = MSTGeneratorSpec(kind="mst")
    bad = 0.6305445895008661  # 5 shares of prior(d / 5) sum, rounded up, one ulp above d (6 columns)
    fixed = mst_rho(bad, gen=gen, columns=6)
    assert fixed < bad and bad - fixed < 1e-12
    assert mst_rho(fixed, gen=gen, columns=6) == fixed
    assert mst_rho(0.8243062813746309, gen=gen, columns=6) == 0.8243062813746309  # fits as it is


def test_mst_rho_with_an_anchor_replays_sequentials_split_before_msts():
    """Sequential gives MST a share of the multi-way budget: a rho that fits plain MST can overflow there."""
    plain, anchored = MSTGeneratorSpec(kind="mst"), MSTGeneratorSpec(kind="mst", anchor="x0", anchor_share=0.3)
    bad = 0.19291272484884286
    assert mst_rho(bad, gen=plain, columns=6) == bad
    fixed = mst_rho(bad, gen=anchored, columns=6)
    assert fixed < bad and bad - fixed < 1e-12
    assert mst_rho(fixed, gen=anchored, columns=6) == fixed
    # Halving is exact in binary floating point: with the default share (0.5) MST's arithmetic is plain MST's.
    half = MSTGeneratorSpec(kind="mst", anchor="x0")
    assert mst_rho(0.6305445895008661, gen=half, columns=6) == mst_rho(0.6305445895008661, gen=plain, columns=6)


@pytest.mark.slow
@pytest.mark.parametrize(("generator", "bad"), [
    ({"kind": "mst"}, 0.6305445895008661),
    ({"kind": "mst", "anchor": "x0", "anchor_share": 0.3}, 0.19291272484884286),
], ids=["plain", "anchor"])
def test_mst_runs_at_a_lowered_rho_where_opendp_refused_the_raw_one(tmp_path, generator, bad):
    """Replays OpenDP 0.16's failure on public, empty data: the raw rho fails, the lowered one runs."""
    import polars as pl

    columns = {f"x{i}": {"type": "boolean"} for i in range(6)}
    spec = make_spec(tmp_path, columns=columns, generator=generator)
    empty = pl.LazyFrame(schema={f"c{i}": pl.UInt32 for i in range(6)})
    with pytest.raises(Exception, match="insufficient budget"):
        make_measurement(spec, rho=bad)(empty)
    make_measurement(spec, rho=mst_rho(bad, gen=spec.generator, columns=6))(empty)


# ------------------------------------------------------------------------------------- fitted models


GENERATORS = {"mst": {"kind": "mst"}, "aim": {"kind": "aim", "rounds": 6, "queries": 2},
              "mst-anchor": {"kind": "mst", "anchor": "score"}}


@pytest.fixture(scope="module", params=list(GENERATORS))
def fitted(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    generator = GENERATORS[request.param]
    spec = spec_for(tmp, generator)
    model, account = fit(spec, table())
    return spec, model, account, tmp


@pytest.mark.slow
def test_recorded_spend_is_opendps_map_of_the_fitted_measurement(fitted):
    spec, _, account, _ = fitted
    (spend,) = account.spends
    stage = plan_budget(spec).stage("generator")
    rho = spend.detail["rho"]
    assert spend.stage == "generator" and spend.delta == stage.delta
    # Under RDP (the default) the event is what OpenDP states: rho-zCDP, with no bad event on top.
    assert spend.event == dp_event.ZCDpEvent(rho=rho) and spend.extra_delta == 0.0
    assert spend.epsilon <= stage.epsilon and spend.epsilon == pytest.approx(stage.epsilon, rel=1e-6)
    measurement = make_measurement(spec, rho=rho)
    assert float(measurement.map(1)) <= rho
    assert spend.epsilon == pytest.approx(zcdp_epsilon(measurement, d_in=1, delta=stage.delta), rel=1e-12)
    # OpenDP draws the noise itself (secure), whatever NoiseSource the run passed.
    assert spend.secure_noise and account.secure_noise
    # The release's epsilon fits the spec under RDP and basic composition; PLD composes no zCDP event, so
    # the summary states no PLD figure rather than the looser one of the worst-case stand-in.
    summary = account.summary()
    assert max(summary["epsilon_rdp"], summary["epsilon_basic"]) <= spec.privacy.epsilon * (1 + 1e-9)
    assert summary["epsilon_pld"] is None and account.epsilon_by("pld") <= stage.epsilon * (1 + 1e-9)
    assert summary["epsilon"] <= stage.epsilon


@pytest.mark.slow
def test_rows_stay_in_declared_domains_with_nulls_only_where_allowed(fitted):
    spec, model, _, _ = fitted
    rows = model.sample(2_000, seed=1)
    assert list(rows.columns) == list(COLUMNS) and len(rows) == 2_000
    assert rows_valid(rows, spec)
    assert rows[["dept", "smoker", "age"]].notna().all().all()
    # 20% of the 400 scores are null; the noisy 1-way marginal's std is ~1 count (rho ~ 4 split over 4
    # columns), so the model's null share is 0.2 +- 0.01 and 2,000 draws add +- 0.01 (1 std).
    assert 0.12 < rows["score"].isna().mean() < 0.28


@pytest.mark.slow
def test_sampling_is_deterministic_for_rows_and_seed(fitted):
    _, model, _, _ = fitted
    pd.testing.assert_frame_equal(model.sample(300, seed=7), model.sample(300, seed=7))
    assert not model.sample(300, seed=7).equals(model.sample(300, seed=8))


@pytest.mark.slow
def test_saved_model_samples_the_same_rows_in_another_process(fitted):
    spec, model, _, tmp = fitted
    model.save(tmp / "model")
    (tmp / "spec.json").write_text(spec.model_dump_json())
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from safesynth.generator import get_backend
        from safesynth.spec import ReleaseSpec
        spec = ReleaseSpec.model_validate_json(Path({str(tmp / "spec.json")!r}).read_text())
        assert "jax" not in sys.modules
        model = get_backend(spec.generator.kind).load(Path({str(tmp / "model")!r}), spec=spec)
        model.sample(250, seed=3).to_parquet({str(tmp / "other.parquet")!r})
        assert "jax" not in sys.modules, "sampling must not need jax"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp / "other.parquet"), model.sample(250, seed=3),
                                  check_dtype=False)


@pytest.mark.slow
def test_a_strong_two_way_correlation_survives(fitted):
    """smoker == (dept == cardio) in 97% of rows; independent columns would agree in ~55% of rows.

    At epsilon 20 the 2-way marginal's noise std is a few counts against cells of ~130 records, and the
    (dept, smoker) pair's selection score beats every other pair's by hundreds of noise scales, so the
    synthetic agreement is 0.97 +- ~0.03; the bound 0.85 fails with probability far below 1e-6.
    """
    _, model, _, _ = fitted
    rows = model.sample(4_000, seed=2)
    agree = ((rows["dept"] == "cardio") == rows["smoker"].astype(bool)).mean()
    assert agree > 0.85


@pytest.mark.slow
def test_the_fitted_models_marginal_targets_sum_to_one_and_agree_with_its_samples(fitted):
    """One-way targets for every column, two-way ones per (parent, column); 20,000 samples land within 0.03."""
    from safesynth.generator import grid

    spec, model, _, _ = fitted
    targets = model.targets()
    assert {t.columns for t in targets if len(t.columns) == 1} == {(i,) for i in range(len(spec.columns))}
    assert all(t.table.sum() == pytest.approx(1.0) and (t.table >= 0).all() for t in targets)
    if spec.generator.anchor is not None:  # the anchor's pair with every other column is in the model
        anchor = list(spec.columns).index(spec.generator.anchor)
        pairs = {frozenset(t.columns) for t in targets if len(t.columns) == 2}
        assert pairs >= {frozenset((anchor, i)) for i in range(len(spec.columns)) if i != anchor}
    rows = model.sample(20_000, seed=2)
    for t in (t for t in targets if len(t.columns) == 1):
        name, col = list(spec.columns.items())[t.columns[0]]
        cells = np.bincount(grid.cell_index(rows[name], col, model.bins), minlength=t.table.size) / len(rows)
        assert np.abs(cells - t.table).max() < 0.03


def test_loading_a_damaged_model_is_a_generator_error(tmp_path):
    from safesynth.errors import GeneratorError
    from safesynth.generator.mbi import GraphicalModel

    spec = spec_for(tmp_path, {"kind": "mst"})
    with pytest.raises(GeneratorError, match="not a saved mst model"):
        GraphicalModel.load(tmp_path, spec=spec)
    (tmp_path / "mbi.json").write_text('{"format": 1, "kind": "mst", "order": [{"column": 0}]}')
    with pytest.raises(GeneratorError, match="not a saved mst model"):
        GraphicalModel.load(tmp_path, spec=spec)
