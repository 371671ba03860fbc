"""Gaussian kernel densities in a reduced feature space, shared by the density-based attacks.

:class:`ReducedSpace` maps rows to at most ``dims`` principal components of :func:`featurize`'s features,
each feature first standardised (so a few numeric columns are not drowned by wide one-hot and text
blocks), fitted on rows the attacker holds (synthetic and reference rows, never the targets), and scaled
to unit variance. :class:`GaussianKDE` is a product-Gaussian kernel density with Scott's rule per dimension
(bandwidth ``n^(-1/(d+4))`` times that dimension's standard deviation), evaluated in log space with a
log-sum-exp over chunks so it neither overflows nor underflows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from safesynth.audit.attacks.features import featurize
from safesynth.spec import ReleaseSpec

__all__ = ["GaussianKDE", "ReducedSpace"]

_CHUNK_CELLS = 4_000_000  # targets x kernel centres per chunk (~32 MB of float64)
_MIN_STD = 1e-6  # floor on a dimension's spread: a constant column gets a narrow, finite kernel


@dataclass(frozen=True, slots=True, kw_only=True)
class ReducedSpace:
    """A linear map from featurized rows to at most ``dims`` whitened principal components."""

    mean: np.ndarray
    scale: np.ndarray  # per feature standard deviation (1 where constant)
    components: np.ndarray  # (k, features), rows scaled so the fitted rows have unit variance

    @classmethod
    def fit(cls, frames: Sequence[pd.DataFrame], *, spec: ReleaseSpec, dims: int = 10) -> ReducedSpace:
        """PCA of the featurized ``frames`` (pooled), keeping at most ``dims`` components with variance."""
        x = np.vstack([featurize(f, spec) for f in frames])
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < _MIN_STD] = 1.0
        _, sing, vt = np.linalg.svd((x - mean) / scale, full_matrices=False)
        std = sing / math.sqrt(max(len(x) - 1, 1))
        keep = std > _MIN_STD * max(float(std.max(initial=0.0)), 1.0)
        k = min(dims, int(keep.sum()))
        if k == 0:  # every row identical: one dimension, no spread (densities then depend on the floor only)
            return cls(mean=mean, scale=scale, components=np.zeros((1, x.shape[1])))
        return cls(mean=mean, scale=scale, components=vt[:k] / std[:k, None])

    def transform(self, frame: pd.DataFrame, *, spec: ReleaseSpec) -> np.ndarray:
        """The rows of ``frame`` in the reduced space, shape ``(rows, k)``."""
        return np.asarray(((featurize(frame, spec) - self.mean) / self.scale) @ self.components.T, dtype=float)


@dataclass(frozen=True, slots=True, kw_only=True)
class GaussianKDE:
    """A product-Gaussian kernel density estimate with Scott's rule bandwidths."""

    centres: np.ndarray  # (n, d)
    bandwidth: np.ndarray  # (d,)

    @classmethod
    def fit(cls, points: np.ndarray, *, factor: float = 1.0) -> GaussianKDE:
        """Kernels at ``points`` (at least one row); bandwidth ``factor * n^(-1/(d+4)) * std`` per dimension."""
        n, d = points.shape
        if n == 0:
            raise ValueError("a kernel density needs at least one point")
        std = points.std(axis=0, ddof=1) if n > 1 else np.ones(d)
        scott = n ** (-1.0 / (d + 4))
        return cls(centres=points, bandwidth=factor * scott * np.maximum(std, _MIN_STD))

    def log_kernels(self, x: np.ndarray, centres: np.ndarray) -> np.ndarray:
        """``log K_h(x_i - c_j)`` for every pair, shape ``(len(x), len(centres))``."""
        xs, cs = x / self.bandwidth, centres / self.bandwidth
        sq = (xs**2).sum(axis=1)[:, None] + (cs**2).sum(axis=1)[None, :] - 2.0 * xs @ cs.T
        norm = float(np.log(self.bandwidth).sum()) + 0.5 * x.shape[1] * math.log(2 * math.pi)
        return np.asarray(-0.5 * np.maximum(sq, 0.0) - norm, dtype=float)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """``log p(x)`` per row of ``x``: a log-sum-exp over the kernels, in chunks of rows."""
        out = np.empty(len(x))
        step = max(1, _CHUNK_CELLS // max(len(self.centres), 1))
        for start in range(0, len(x), step):
            block = self.log_kernels(x[start:start + step], self.centres)
            out[start:start + step] = logsumexp(block, axis=1) - math.log(len(self.centres))
        return out
