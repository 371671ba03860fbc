"""Sources of privacy noise.

Privacy noise comes from one secure source, OpenDP's samplers (`OpenDPNoise`), which draw from the
operating system's CSPRNG and sample Laplace and Gaussian noise exactly (no floating-point attacks:
"Internally, all sampling is done using the discrete Laplace distribution", see OpenDP's proofs for
``make_laplace`` and ``make_gaussian``). `numpy.random` is never used for privacy noise.

`SeededNoise` exists for tests that need reproducible noise; it is marked ``secure = False`` and a
release made with it records ``secure_noise: false`` in its manifest.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # opendp is imported on first use
    from opendp.mod import Measurement

__all__ = ["NoiseSource", "OpenDPNoise", "SeededNoise", "default_noise", "privacy_map"]


@runtime_checkable
class NoiseSource(Protocol):
    """Adds zero-centred noise of a given scale to every element of a vector."""

    #: True when the noise is drawn from a cryptographically secure, exact sampler.
    secure: bool

    def laplace(self, values: np.ndarray, *, scale: float, discrete: bool = False) -> np.ndarray:
        """``values + Laplace(scale)`` elementwise (discrete: integers + discrete Laplace)."""
        ...

    def gaussian(self, values: np.ndarray, *, scale: float, discrete: bool = False) -> np.ndarray:
        """``values + N(0, scale^2)`` elementwise (discrete: integers + discrete Gaussian)."""
        ...


@functools.cache
def _opendp() -> ModuleType:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@functools.lru_cache(maxsize=256)
def _measurement(kind: str, scale: float, discrete: bool) -> Measurement:
    dp = _opendp()
    if discrete:
        domain = dp.vector_domain(dp.atom_domain(T="i64"))
        metric = dp.l1_distance(T="i64") if kind == "laplace" else dp.l2_distance(T="i64")
    else:
        domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
        metric = dp.l1_distance(T=float) if kind == "laplace" else dp.l2_distance(T=float)
    make = dp.m.make_laplace if kind == "laplace" else dp.m.make_gaussian
    measurement: Measurement = make(domain, metric, scale=float(scale))
    return measurement


def privacy_map(kind: str, *, scale: float, d_in: float, discrete: bool = False) -> float:
    """OpenDP's own privacy map of the measurement :class:`OpenDPNoise` draws ``kind`` noise with.

    Args:
        kind: ``laplace`` (the map gives a pure epsilon, ``MaxDivergence``) or ``gaussian`` (a zCDP
            ``rho``, ``ZeroConcentratedDivergence``).
        scale: the noise scale.
        d_in: the sensitivity, in the measurement's input metric (L1 for Laplace, L2 for Gaussian); an
            integer for ``discrete`` (rounded up here, which only overstates the cost).
        discrete: integer noise (discrete Laplace or Gaussian) on an integer vector.

    Returns:
        The privacy loss OpenDP proves for neighbours at distance ``d_in``, rounded up by OpenDP where a
        float computation would round (its float-safe arithmetic), so never below ``d_in / scale`` (or
        ``d_in^2 / (2 scale^2)``).
    """
    if not scale > 0 or not np.isfinite(scale):
        raise ValueError(f"`scale` ({scale}) must be finite and > 0")
    meas = _measurement(kind, float(scale), discrete)
    return float(meas.map(int(np.ceil(d_in)) if discrete else float(d_in)))  # type: ignore[no-untyped-call]


class OpenDPNoise:
    """Secure, exact noise from OpenDP (the default and the only source used for real releases)."""

    secure = True

    def _apply(self, kind: str, values: np.ndarray, scale: float, discrete: bool) -> np.ndarray:
        if scale < 0 or not np.isfinite(scale):
            raise ValueError(f"`scale` ({scale}) must be finite and >= 0")
        arr = np.asarray(values)
        flat = arr.reshape(-1)
        if flat.size == 0:
            return arr.astype(np.int64 if discrete else np.float64)
        meas = _measurement(kind, scale, discrete)
        if discrete:
            out = np.asarray(meas([int(v) for v in flat.astype(np.int64)]), dtype=np.int64)
        else:
            out = np.asarray(meas([float(v) for v in flat.astype(np.float64)]), dtype=np.float64)
        return out.reshape(arr.shape)

    def laplace(self, values: np.ndarray, *, scale: float, discrete: bool = False) -> np.ndarray:
        return self._apply("laplace", values, scale, discrete)

    def gaussian(self, values: np.ndarray, *, scale: float, discrete: bool = False) -> np.ndarray:
        return self._apply("gaussian", values, scale, discrete)


class SeededNoise:
    """Reproducible, NOT secure noise for tests. Never use it for a release."""

    secure = False

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def laplace(self, values: np.ndarray, *, scale: float, discrete: bool = False) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if discrete:
            # Difference of two geometrics is discrete Laplace with parameter exp(-1/scale).
            p = 1.0 - np.exp(-1.0 / scale) if scale > 0 else 1.0
            noise = self._rng.geometric(p, arr.shape) - self._rng.geometric(p, arr.shape)
            return (np.asarray(values, dtype=np.int64) + noise).astype(np.int64)
        return arr + self._rng.laplace(0.0, scale, arr.shape)

    def gaussian(self, values: np.ndarray, *, scale: float, discrete: bool = False) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        out = arr + self._rng.normal(0.0, scale, arr.shape)
        return np.rint(out).astype(np.int64) if discrete else out


def default_noise() -> NoiseSource:
    """The noise source for releases: OpenDP's secure samplers."""
    return OpenDPNoise()
