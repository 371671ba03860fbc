"""DP discovery of the domains a spec leaves undeclared: category sets, numeric bounds, row counts.

A domain declared in the spec is public; one that is not must be learned from the private data with
differential privacy, out of the ``discovery`` stage of the budget plan. :func:`discover_domains` fills
every undeclared domain and returns a new spec; each column's spend is recorded as a
:class:`~safesynth.privacy.accountant.StageSpend` named ``discovery.<column>``.

Mechanisms (neighbouring relation: add/remove one record; a record has one value per column, so it
adds 1 to exactly one count of each column's histogram: L1 = L2 = L0 sensitivity 1):

* **Categories**: a stability-based histogram (Korolova et al. 2009; Rogers 2023): discrete Laplace noise
  of scale ``b = 1 / epsilon`` on the count of every value *present* in the data, keeping values whose
  noisy count is at least ``tau``; then the ``max_categories`` largest (post-processing). For a value
  present in both neighbours this is the discrete Laplace mechanism (epsilon); a value seen once in
  only one neighbour is revealed with probability ``P(1 + Z >= tau) = p^(tau-1) / (1 + p)``, ``p =
  e^(-1/b)``, and ``tau`` is the smallest threshold making that at most the column's delta. That delta
  is recorded as the spend's ``extra_delta`` (the accountant adds it, see accountant.py).
  We do not call OpenDP's ``make_laplace_threshold``: in 0.16 its privacy map omits the mass at the
  threshold and under-reports delta (opendp/opendp#2922; we measured a released rate of 0.096 for a
  reported delta of 0.036 at scale 1, threshold 3). Our delta is tested against the empirical rate.
* **Bounds** of integer and float columns: a noisy histogram over a fixed, public, data-independent grid
  of bins (0, then +-2^(k/4) from 2^-10 to 2^50, integer edges for integer columns, plus two overflow
  bins). Every bin gets discrete Laplace noise (pure epsilon); bins whose noisy count reaches ``T`` are
  "occupied", with ``T`` set so that an empty bin passes with probability at most 1e-4 over the whole
  grid; the bounds are the outer edges of the outermost occupied bins. Values in sparse tails (fewer
  than about ``T`` records per ~19%-wide bin) fall outside and will be clamped by the generator: that is
  the price of not reading ``min()``/``max()``. We chose this over DP quantiles (exponential mechanism)
  because its noise goes through the :class:`NoiseSource` and its cost is an exact discrete-Laplace
  event; the rank error is of the same order for the budgets we use.
* **Row count**: :func:`dp_row_count`, discrete Laplace or Gaussian on the count (sensitivity 1).

All noise is drawn through the given :class:`~safesynth.privacy.noise.NoiseSource` (OpenDP's exact
samplers in a release). With a :class:`SeededNoise` (tests), discovery is reproducible and every spend
records ``secure_noise=False``; nothing here draws noise any other way.

Budget split: the discovery stage's epsilon is divided evenly over the undeclared columns; its delta is
divided evenly over the undeclared *categorical* columns (bounds and counts with Laplace are pure). The
shares never sum to more than the stage's budget (basic composition).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from safesynth.errors import DataError, InternalError, SpecError
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, compose_epsilon
from safesynth.privacy.mechanisms import GaussianMechanism, LaplaceMechanism
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import StageBudget
from safesynth.spec import CategoricalColumn, FloatColumn, IntegerColumn, ReleaseSpec

__all__ = [
    "check_discovery",
    "discover_bounds",
    "discover_categories",
    "discover_domains",
    "dp_row_count",
    "laplace_tail",
    "threshold_for",
    "undeclared_columns",
]

#: Bins per doubling of the bounds grid (edges 2^(k/4): each bin is ~19% wide).
_STEPS_PER_OCTAVE = 4
_MIN_EXPONENT = -10
_MAX_EXPONENT = 50
#: Chance, over the whole grid, that an empty bin is taken as occupied.
_EMPTY_BIN_RATE = 1e-4


# ------------------------------------------------------------------------------------ noise arithmetic


def laplace_tail(m: int, *, scale: float) -> float:
    """``P(Z >= m)`` for discrete Laplace ``Z`` (pmf proportional to ``exp(-|z| / scale)``), ``m >= 1``."""
    if m < 1:
        raise ValueError(f"`m` ({m}) must be >= 1")
    p = math.exp(-1.0 / scale)
    return math.exp(-m / scale - math.log1p(p))


def threshold_for(*, scale: float, delta: float) -> int:
    """Smallest integer ``t >= 1`` with ``P(Z >= t) <= delta`` for discrete Laplace noise of ``scale``."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"`delta` ({delta}) must be in (0, 1)")
    p = math.exp(-1.0 / scale)
    m = max(1, math.ceil(-scale * (math.log(delta) + math.log1p(p))))
    while laplace_tail(m, scale=scale) > delta:
        m += 1
    while m > 1 and laplace_tail(m - 1, scale=scale) <= delta:
        m -= 1
    return m


def _count_laplace(epsilon: float) -> LaplaceMechanism:
    """Discrete Laplace for counts (sensitivity 1) whose OpenDP-mapped epsilon never exceeds ``epsilon``."""
    return LaplaceMechanism.calibrate(sensitivity=1.0, epsilon=epsilon, discrete=True)


def _share(total: float, parts: int) -> float:
    """``total / parts``, rounded down so that ``parts`` shares never sum to more than ``total``."""
    share = total / parts
    while math.fsum([share] * parts) > total:
        share = math.nextafter(share, 0.0)
    return share


# ------------------------------------------------------------------------------------------ row count


def dp_row_count(
    n_rows: int,
    *,
    epsilon: float,
    noise: NoiseSource,
    delta: float = 0.0,
    mechanism: str = "laplace",
    accountant: str = "rdp",
    stage: str = "rows",
) -> tuple[int, StageSpend]:
    """A noisy row count, clamped at 0, and its spend.

    Privacy:
        The count has sensitivity 1 under add/remove one record. ``laplace``: discrete Laplace of scale
        ``1 / epsilon``, pure ``epsilon``. ``gaussian``: discrete Gaussian calibrated with ``accountant``
        to (``epsilon``, ``delta``). Clamping is post-processing.
    """
    mech: LaplaceMechanism | GaussianMechanism
    if mechanism == "laplace":
        mech = _count_laplace(epsilon)
        spent_epsilon, spent_delta = mech.epsilon, 0.0
    elif mechanism == "gaussian":
        if not delta > 0:
            raise ValueError(f"`delta` ({delta}) must be > 0 for the Gaussian mechanism")
        mech = GaussianMechanism.calibrate(
            sensitivity=1.0, epsilon=epsilon, delta=delta, accountant=accountant, discrete=True
        )
        spent_epsilon, spent_delta = compose_epsilon([mech.event()], delta=delta, accountant=accountant), delta
    else:
        raise ValueError(f"`mechanism` ({mechanism!r}) must be 'laplace' or 'gaussian'")
    noisy = int(mech.release(np.array([int(n_rows)], dtype=np.int64), noise=noise)[0])
    spend = StageSpend(
        stage=stage,
        event=mech.event(),
        epsilon=spent_epsilon,
        delta=spent_delta,
        mechanism=mechanism,
        secure_noise=bool(noise.secure),
        detail={"statistic": "row_count", "scale": mech.scale},
    )
    return max(0, noisy), spend


# ----------------------------------------------------------------------------------------- categories


def discover_categories(
    values: pd.Series,
    *,
    epsilon: float,
    delta: float,
    max_categories: int,
    noise: NoiseSource,
    stage: str,
) -> tuple[tuple[str, ...], StageSpend]:
    """The values of a column whose thresholded noisy count survives, at most ``max_categories``.

    Nulls are not categories. Values are compared as strings. The result is sorted and may be empty.

    Privacy:
        (``epsilon``, ``delta``)-DP under add/remove one record, each record counting once in the
        column: discrete Laplace of scale ``1 / epsilon`` on present values' counts (event
        ``DiscreteLaplaceDpEvent``), plus ``delta`` (``extra_delta``) for a once-seen value crossing the
        threshold. Top-k selection and sorting are post-processing.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"`delta` ({delta}) must be in (0, 1) for category discovery")
    mech = _count_laplace(epsilon)
    tau = 1 + threshold_for(scale=mech.scale, delta=delta)
    counts = values.dropna().astype(str).value_counts(sort=False)
    keys = counts.index.to_numpy(dtype=object)
    noisy = mech.release(counts.to_numpy(dtype=np.int64), noise=noise)
    kept = [(int(c), str(k)) for k, c in zip(keys, noisy, strict=True) if c >= tau]
    kept.sort(key=lambda item: (-item[0], item[1]))
    categories = tuple(sorted(k for _, k in kept[:max_categories]))
    spend = StageSpend(
        stage=stage,
        event=mech.event(),
        epsilon=mech.epsilon,
        delta=delta,
        extra_delta=delta,
        mechanism="laplace_threshold",
        secure_noise=bool(noise.secure),
        detail={"kind": "categories", "scale": mech.scale, "threshold": tau, "kept": len(categories)},
    )
    return categories, spend


# --------------------------------------------------------------------------------------------- bounds


def _grid(integer: bool) -> np.ndarray:
    """Public bin edges: 0 and +-2^(k/4), k/4 in [-10, 50]; integer edges for integer columns."""
    exponents = np.arange(_MIN_EXPONENT * _STEPS_PER_OCTAVE, _MAX_EXPONENT * _STEPS_PER_OCTAVE + 1)
    positive = 2.0 ** (exponents / _STEPS_PER_OCTAVE)
    if integer:
        positive = np.unique(np.ceil(positive[positive >= 1.0]))
    return np.concatenate([-positive[::-1], [0.0], positive])


def _as_numbers(values: pd.Series) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").astype("Float64").dropna()
    out: np.ndarray = numbers.to_numpy(dtype=np.float64)
    return out


def discover_bounds(
    values: pd.Series,
    *,
    epsilon: float,
    noise: NoiseSource,
    integer: bool,
    stage: str,
    lower: float | None = None,
    upper: float | None = None,
) -> tuple[tuple[float, float] | None, StageSpend]:
    """Bounds ``(lo, hi)`` containing the bulk of a numeric column, or ``None`` if no bin is occupied.

    A declared ``lower``/``upper`` is kept and only the other side is discovered (values are clamped
    to the declared side first). Integer columns get integer bounds; ``hi`` is inclusive.

    Privacy:
        Pure ``epsilon``-DP under add/remove one record: each record falls in exactly one bin of a
        public grid, so the histogram has L1 sensitivity 1; every bin gets discrete Laplace noise of
        scale ``1 / epsilon`` (event ``DiscreteLaplaceDpEvent``). Choosing bins is post-processing.
    """
    mech = _count_laplace(epsilon)
    edges = _grid(integer)
    x = np.clip(_as_numbers(values), -np.inf if lower is None else lower, np.inf if upper is None else upper)
    # Bin i covers [edges[i-1], edges[i]); bin 0 and bin len(edges) are the overflow bins.
    first = 0 if lower is None else int(np.searchsorted(edges, lower, side="right"))
    last = len(edges) if upper is None else int(np.searchsorted(edges, upper, side="right"))
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)[first:last + 1]
    noisy = mech.release(counts.astype(np.int64), noise=noise)
    threshold = threshold_for(scale=mech.scale, delta=_EMPTY_BIN_RATE / len(counts))
    occupied = np.flatnonzero(noisy >= threshold) + first
    spend = StageSpend(
        stage=stage,
        event=mech.event(),
        epsilon=mech.epsilon,
        delta=0.0,
        mechanism="laplace",
        secure_noise=bool(noise.secure),
        detail={"kind": "bounds", "scale": mech.scale, "threshold": threshold, "bins": len(counts)},
    )
    if occupied.size == 0:
        return None, spend
    return _edges_of(edges, int(occupied[0]), int(occupied[-1]), integer=integer, lower=lower, upper=upper), spend


def _edges_of(edges: np.ndarray, lo_bin: int, hi_bin: int, *, integer: bool,
              lower: float | None, upper: float | None) -> tuple[float, float] | None:
    """Outer edges of bins ``lo_bin..hi_bin`` (overflow bins clamp to the grid's ends)."""
    lo = float(lower) if lower is not None else float(edges[max(lo_bin - 1, 0)])
    if upper is not None:
        hi = float(upper)
    elif hi_bin >= len(edges):
        hi = float(edges[-1])
    else:
        hi = float(edges[hi_bin]) - (1.0 if integer else 0.0)  # integer bin [a, b) holds a..b-1
    if integer:
        return lo, max(hi, lo)
    if lo >= hi:
        # A declared bound on a bin edge, or only an overflow bin occupied: widen the discovered side.
        if upper is None:
            hi = float(edges[min(int(np.searchsorted(edges, lo, side="right")), len(edges) - 1)])
        else:
            lo = float(edges[max(int(np.searchsorted(edges, hi, side="left")) - 1, 0)])
    return (lo, hi) if lo < hi else None


def _outward(lo: float, hi: float, *, precision: int, keep_lo: bool, keep_hi: bool) -> tuple[float, float]:
    """Round discovered float bounds outwards to the column's decimal precision."""
    factor = 10.0**precision
    if not keep_lo:
        lo = math.floor(lo * factor) / factor
    if not keep_hi:
        hi = math.ceil(hi * factor) / factor
    return lo, hi


# --------------------------------------------------------------------------------------------- driver


def undeclared_columns(spec: ReleaseSpec) -> list[str]:
    """Columns whose domain the spec does not declare (need DP discovery), in declared order."""
    return [name for name, col in spec.columns.items() if not col.bounded]


def check_discovery(spec: ReleaseSpec, stage: StageBudget) -> None:
    """Fail before any data is read when the discovery stage cannot pay for the undeclared domains.

    Raises:
        SpecError: no epsilon for discovery, or categories to discover without delta.
    """
    names = undeclared_columns(spec)
    if not names:
        return
    if not stage.epsilon > 0:
        raise SpecError(f"columns {names} need DP discovery but the `{stage.name}` stage has no epsilon")
    categorical = [n for n in names if isinstance(spec.columns[n], CategoricalColumn)]
    if categorical and not stage.delta > 0:
        raise SpecError(
            f"columns {categorical} need DP category discovery, which needs `privacy.delta` > 0 "
            "(a threshold reveals a value seen once with a small probability); declare `categories` "
            "or set `privacy.delta`"
        )


def discover_domains(
    frame: pd.DataFrame,
    *,
    spec: ReleaseSpec,
    stage: StageBudget,
    account: ReleaseAccount,
    noise: NoiseSource,
) -> ReleaseSpec:
    """A copy of ``spec`` with every undeclared category set and numeric bound discovered with DP.

    Each column's spend is added to ``account`` as soon as its noise is drawn, before any error.

    Privacy:
        At most (``stage.epsilon``, ``stage.delta``) by basic composition over the columns, under
        add/remove one record (see the module docstring for each mechanism and its sensitivity).

    Raises:
        SpecError: the stage cannot pay for discovery (checked before reading ``frame``).
        DataError: a column is missing, or nothing in it survives the noise (too few rows for the
            budget); the message names the column, never its values.
    """
    names = undeclared_columns(spec)
    if not names:
        return spec
    check_discovery(spec, stage)
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(f"columns {missing} are missing from the source; cannot discover their domains")
    categorical = [n for n in names if isinstance(spec.columns[n], CategoricalColumn)]
    epsilon = _share(stage.epsilon, len(names))
    delta = _share(stage.delta, len(categorical)) if categorical else 0.0
    updated = {}
    for name in names:
        updated[name] = _discover_column(frame[name], name=name, spec=spec, stage=stage, account=account,
                                         noise=noise, epsilon=epsilon, delta=delta)
    columns = {name: updated.get(name, col) for name, col in spec.columns.items()}
    return spec.model_copy(update={"columns": columns})


def _discover_column(
    values: pd.Series, *, name: str, spec: ReleaseSpec, stage: StageBudget, account: ReleaseAccount,
    noise: NoiseSource, epsilon: float, delta: float,
) -> CategoricalColumn | IntegerColumn | FloatColumn:
    col = spec.columns[name]
    label = f"{stage.name}.{name}"
    if isinstance(col, CategoricalColumn):
        categories, spend = discover_categories(values, epsilon=epsilon, delta=delta,
                                                max_categories=col.max_categories, noise=noise, stage=label)
        account.add(_with_column(spend, name))
        if not categories:
            raise DataError(
                f"column `{name}`: DP category discovery kept no category (noisy counts below the "
                f"threshold {spend.detail['threshold']}); declare `categories` or allot more "
                "`privacy.allocation.discovery`"
            )
        return col.model_copy(update={"categories": categories})
    if not isinstance(col, IntegerColumn | FloatColumn):
        raise TypeError(f"column `{name}` of type {col.type} has no discoverable domain")
    integer = isinstance(col, IntegerColumn)
    bounds, spend = discover_bounds(values, epsilon=epsilon, noise=noise, integer=integer, stage=label,
                                    lower=col.min, upper=col.max)
    account.add(_with_column(spend, name))
    if bounds is None:
        raise DataError(
            f"column `{name}`: DP bounds discovery found no range above the noise threshold "
            f"{spend.detail['threshold']}; declare `min`/`max` or allot more `privacy.allocation.discovery`"
        )
    lo, hi = bounds
    if integer:
        return col.model_copy(update={"min": int(lo), "max": int(hi)})
    if not isinstance(col, FloatColumn):
        raise InternalError(f"column `{name}`: expected a float column after the integer case")
    lo, hi = _outward(lo, hi, precision=col.precision, keep_lo=col.min is not None, keep_hi=col.max is not None)
    return col.model_copy(update={"min": lo, "max": hi})


def _with_column(spend: StageSpend, name: str) -> StageSpend:
    return dataclasses.replace(spend, detail={"column": name, **spend.detail})
