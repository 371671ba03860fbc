"""A local likelihood-ratio attack in the spirit of Gen-LRA (Ward, Lin, Marcus et al. 2025).

Gen-LRA asks: does the synthetic data look more like a sample from the population *with* the target than
without it? It fits a surrogate density to the reference rows ``R``, once as is and once with the target
``x`` added, and compares the likelihood of the synthetic rows near ``x`` under the two:

    score(x) = sum over s in kNN_S(x) of  log p_{R + x}(s) - log p_R(s).

What we do (a cheap, exact version of that recipe): the surrogate is a Gaussian KDE of the reference rows
in the reduced space of :mod:`.density`. Adding one kernel to a KDE of ``n`` points is closed form,

    p_{R + x}(s) = (n p_R(s) + K_h(s - x)) / (n + 1),

so each target costs its ``k`` nearest synthetic rows and ``k`` kernel evaluations, in log space
(``logaddexp``). The bandwidth is the reference KDE's (Scott's rule) for both fits: the added point
changes Scott's factor by a factor ``((n+1)/n)^(-1/(d+4))``, which we ignore. The paper fits other
surrogates (and more neighbours); the KDE keeps it parameter-free and fast.

Scale: ``log p_R`` is evaluated once per synthetic row; with more than ``max_centres`` (default 2,048)
reference rows the KDE sums the ``kde_neighbours`` (default 128) nearest reference kernels exactly and
estimates the rest from a seeded subsample (:mod:`.density`), linear in the synthetic rows. ``n`` in the
closed form stays the full reference count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from safesynth.audit.attacks.base import register
from safesynth.audit.attacks.density import GaussianKDE, ReducedSpace
from safesynth.spec import ReleaseSpec

__all__ = ["LocalLikelihoodRatio"]


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LocalLikelihoodRatio:
    """How much adding the target to a reference KDE raises the likelihood of its ``k`` nearest synthetic rows."""

    name: ClassVar[str] = "gen-lra"
    neighbours: int = 5
    dims: int = 10
    max_centres: int = 2_048
    kde_neighbours: int = 128

    def scores(self, *, synthetic: pd.DataFrame, reference: pd.DataFrame, targets: pd.DataFrame,
               spec: ReleaseSpec) -> np.ndarray:
        """See :class:`~safesynth.audit.attacks.base.MembershipAttack`.

        Raises:
            ValueError: ``synthetic`` or ``reference`` has no rows.
        """
        if len(synthetic) == 0 or len(reference) == 0:
            raise ValueError("Gen-LRA needs at least one synthetic and one reference row")
        if len(targets) == 0:
            return np.zeros(0)
        space = ReducedSpace.fit([synthetic, reference], spec=spec, dims=self.dims)
        syn = space.transform(synthetic, spec=spec)
        x = space.transform(targets, spec=spec)
        surrogate = GaussianKDE.fit(space.transform(reference, spec=spec), max_centres=self.max_centres,
                                    neighbours=self.kde_neighbours)
        n = len(surrogate.centres)
        log_p_ref = surrogate.log_density(syn)  # log p_R at every synthetic row, once
        k = min(self.neighbours, len(syn))
        idx = NearestNeighbors(n_neighbors=k).fit(syn).kneighbors(x, return_distance=False)
        near = syn[idx]  # (targets, k, d)
        diff = (near - x[:, None, :]) / surrogate.bandwidth
        log_norm = float(np.log(surrogate.bandwidth).sum()) + 0.5 * x.shape[1] * math.log(2 * math.pi)
        log_k = -0.5 * (diff**2).sum(axis=2) - log_norm  # log K_h(s - x)
        log_p = log_p_ref[idx]
        with_x = np.logaddexp(math.log(n) + log_p, log_k) - math.log(n + 1)
        return np.asarray((with_x - log_p).sum(axis=1), dtype=float)
