"""The bounded kernel density (:mod:`safesynth.audit.attacks.density`): nearest centres exactly, a subsample
for the rest.

Deterministic (seeded points and subsample): the tolerances are about the approximation, not sampling error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from safesynth.audit.attacks import create_attack
from safesynth.audit.attacks.density import GaussianKDE
from safesynth.audit.stats import roc_auc
from tests.helpers import make_spec, mixed_frame


def test_small_kdes_stay_exact():
    points = np.random.default_rng(0).normal(size=(300, 4))
    assert GaussianKDE.fit(points).exact
    assert not GaussianKDE.fit(points, max_centres=100).exact


@pytest.mark.parametrize("factor", [0.5, 1.0])
def test_the_bounded_kde_is_close_to_the_exact_one(factor):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(3_000, 5))
    queries = np.vstack([points[:200], rng.normal(size=(200, 5))])
    exact = GaussianKDE.fit(points, factor=factor, max_centres=10_000).log_density(queries)
    approx = GaussianKDE.fit(points, factor=factor, max_centres=500, neighbours=64).log_density(queries)
    err = np.abs(approx - exact)
    assert np.isfinite(approx).all() and err.mean() < 0.05 and err.max() < 0.5


def test_a_far_query_gets_a_finite_density():
    points = np.random.default_rng(2).normal(size=(500, 3))
    assert np.isfinite(GaussianKDE.fit(points, max_centres=50, neighbours=8).log_density(np.full((1, 3), 50.0)))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="must be >= 1"):
        GaussianKDE.fit(np.zeros((5, 2)), max_centres=0)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return make_spec(tmp_path_factory.mktemp("spec"))


@pytest.mark.parametrize(("name", "floor"), [("domias", 0.95), ("gen-lra", 0.75)])
def test_bounded_density_attacks_still_catch_a_copy(name, floor, spec):
    members, non_members, reference = mixed_frame(400, seed=11), mixed_frame(400, seed=12), mixed_frame(400, seed=13)
    attack = create_attack(name, max_centres=100, kde_neighbours=16)
    targets = pd.concat([members, non_members], ignore_index=True)
    scores = attack.scores(synthetic=members.copy(), reference=reference, targets=targets, spec=spec)
    assert roc_auc(scores[:400], scores[400:]) >= floor
    part = attack.scores(synthetic=members.copy(), reference=reference, targets=targets.iloc[390:410], spec=spec)
    np.testing.assert_allclose(part, scores[390:410], rtol=1e-9, atol=1e-12)
