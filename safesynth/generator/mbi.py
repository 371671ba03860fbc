"""The ``aim`` and ``mst`` generators: OpenDP's AIM and MST (``opendp.extras.mbi``, Private-PGM).

Both fit a graphical model (a Markov random field) to noisy marginals of the table, indexed on public
domains, and sample rows from it. The DP algorithm is OpenDP's own: its measurement selects marginals,
adds the noise and fits the model; we only index the records on entry and sample from the fitted model.

Domains (all from the spec, never from the data), the cells of :mod:`~safesynth.generator.grid`:
  * categorical: the declared categories; boolean: false/true;
  * integer: one cell per value when the range has at most ``bins`` values, else ``bins`` integer bins;
    float and datetime: ``bins`` equal-width bins of [min, max]; a value is drawn uniformly inside its
    cell at sampling (post-processing);
  * null: OpenDP gives every column one more key, null. Nulls of a nullable column are that key; a
    non-nullable column has none, and its null cell is removed from the fitted model before sampling
    (post-processing);
  * text: refused when the spec is loaded (AIM and MST model cells, not free text).

With an ``anchor`` column the algorithm is OpenDP's ``Sequential([AIM or MST, Fixed(pairs)])``: the
algorithm spends ``1 - anchor_share`` of the budget left after the one-way marginals, then the anchor's
two-way marginal with every other column is measured with the rest, and the model is fitted to all of
them. One measurement, one rho, the same accounting.

Privacy:
    Add/remove one record (OpenDP: symmetric distance 1 on the indexed frame). OpenDP's measurement spends
    ``rho`` under zero-concentrated DP (Gaussian noise on marginals of L2 sensitivity 1, exponential
    mechanism for selection; AIM's rounds are a privacy filter, MST's steps an adaptive composition).
    ``rho`` is the largest whose conversion to approximate DP by OpenDP
    (``make_fix_delta(make_zCDP_to_approxDP(m), delta)``) fits the plan's ``generator`` stage (epsilon,
    delta); the stated epsilon is that conversion applied to the fitted measurement itself. In the release
    account the stage's event is what OpenDP states, ``rho``-zCDP (``ZCDpEvent``, the RDP curve
    ``rho * alpha``), when the release's accountant composes it (RDP, the default); under PLD it is the worst
    case of the (epsilon, delta) bound: randomized response at epsilon
    (:func:`~safesynth.privacy.accountant.pure_dp_event`) plus a bad event of probability delta
    (``extra_delta``). OpenDP draws the noise from its own secure
    samplers: the run's :class:`~safesynth.privacy.noise.NoiseSource` is not used.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from dp_accounting import dp_event

from safesynth.errors import GeneratorError, InternalError
from safesynth.generator import grid
from safesynth.generator.calibrate import Target
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, pure_dp_event, supports
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import BudgetPlan
from safesynth.repair import repair_records
from safesynth.schema import conform
from safesynth.spec import (
    AIMGeneratorSpec,
    ColumnSpec,
    MSTGeneratorSpec,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["AIMBackend", "GraphicalModel", "MSTBackend", "calibrate_rho", "make_measurement", "mst_rho", "zcdp_epsilon"]

_FORMAT = "safesynth.mbi/1"
MBISpec = AIMGeneratorSpec | MSTGeneratorSpec


@functools.cache
def _opendp() -> ModuleType:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


# ------------------------------------------------------------------------------------------ accounting


def zcdp_epsilon(measurement: Any, *, d_in: Any, delta: float) -> float:
    """Epsilon at ``delta`` of a zCDP ``measurement``, by OpenDP's own zCDP -> approximate-DP map."""
    dp = _opendp()
    approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(measurement), delta=delta)
    epsilon, _ = approx.map(d_in)
    return float(epsilon)


def _composition(d_mids: list[float]) -> Any:
    """An adaptive composition of ``d_mids`` (zCDP) that runs nothing: its map is their sum, rounded up."""
    dp = _opendp()
    domain = dp.vector_domain(dp.atom_domain(T=dp.u32))
    return dp.c.make_adaptive_composition(domain, dp.symmetric_distance(), dp.zero_concentrated_divergence(),
                                          d_in=1, d_mids=d_mids)


def _rho_measurement(rho: float) -> Any:
    """A measurement whose privacy map is exactly ``rho`` zCDP."""
    return _composition([rho])


def calibrate_rho(*, epsilon: float, delta: float) -> float:
    """The largest ``rho`` whose OpenDP conversion to (epsilon, delta)-DP meets ``epsilon`` at ``delta``.

    OpenDP's binary search returns the safe end; the result is checked again.

    Raises:
        ValueError: ``epsilon`` or ``delta`` is not > 0.
    """
    if not epsilon > 0 or not delta > 0:
        raise ValueError(f"`epsilon` ({epsilon}) and `delta` ({delta}) must be > 0 for a zCDP generator")
    dp = _opendp()
    rho = float(dp.binary_search(lambda r: zcdp_epsilon(_rho_measurement(r), d_in=1, delta=delta) <= epsilon,
                                 bounds=(0.0, 1e4)))
    if not rho > 0 or zcdp_epsilon(_rho_measurement(rho), d_in=1, delta=delta) > epsilon:
        raise InternalError(f"rho calibration failed for `epsilon` ({epsilon}) at `delta` ({delta})")
    return rho


def _prior(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def _sum_up(values: list[float]) -> float:
    """Sum rounding every addition up, as OpenDP composes privacy parameters."""
    total = 0.0
    for v in values:
        s = total + v
        total = float(np.nextafter(s, np.inf)) if Fraction(total) + Fraction(v) > Fraction(s) else s
    return total


def _sequential_mids(total: float, weights: tuple[float, ...]) -> list[float]:
    """The budgets OpenDP's ``Sequential`` gives its algorithms out of ``total``: ``weights`` times the largest
    scale whose adaptive composition (a sum rounded up) fits ``total``, found by OpenDP's own binary search."""
    w = np.array(weights, dtype=np.float64)
    scale = _opendp().binary_search_param(lambda s: _composition(list(w * s)), d_in=1, d_out=total, T=float)
    return [float(x) for x in w * scale]


def _mst_composes(rho: float, *, gen: MSTGeneratorSpec, columns: int) -> bool:
    """Whether every composition OpenDP 0.16 builds on the way to MST's selections fits its budget."""
    oneway = 0.5 if gen.oneway_split is None else gen.oneway_split
    d_oneway = rho * oneway
    multiway = _prior(_prior(rho - d_oneway))
    if _sum_up([d_oneway, multiway]) > rho:
        return False
    budget = multiway
    if gen.anchor is not None:  # Sequential([MST, Fixed(anchor pairs)]): MST gets the first share
        budget = _sequential_mids(multiway, (1.0 - gen.anchor_share, gen.anchor_share))[0]
    d_measure = budget * gen.measure_split
    select = _prior(_prior(budget - d_measure))
    if _sum_up([select, d_measure]) > budget:
        return False
    n = min(max(0, gen.num_selections or columns - 1), columns - 1)
    return n == 0 or _sum_up([_prior(select / n)] * n) <= select


def mst_rho(rho: float, *, gen: MSTGeneratorSpec, columns: int) -> float:
    """The largest ``rho' <= rho`` for which OpenDP 0.16's MST composes within its own budget.

    MST splits its selection budget ``d`` into ``n`` shares ``prior(d / n)`` whose sum, rounded up as OpenDP
    composes, can exceed ``d`` by one ulp for some ``rho`` (about 1 in 8); the measurement then fails after
    spending the one-way marginals. The arithmetic is public (``rho``, the splits, the number of columns), so
    it is replayed here, the way ``opendp.extras.mbi`` computes it (with an ``anchor``: ``Sequential``'s
    split first), and ``rho`` lowered ulp by ulp until it fits. Lowering rho only lowers the spend.
    """
    for _ in range(1_000):
        if _mst_composes(rho, gen=gen, columns=columns):
            return rho
        rho = _prior(rho)
    raise InternalError(f"no rho below {rho} composes within MST's budget")


# -------------------------------------------------------------------------------------------- domains


def _cells(col: ColumnSpec, bins: int) -> int:
    """Value cells of a column on its public grid (the null cell excluded)."""
    if isinstance(col, TextColumn):  # the spec refuses text columns for aim/mst: a bug if one gets here
        raise InternalError("a text column reached the aim/mst generator")
    return grid.value_cells(col, bins)


def _index(train: pd.DataFrame, spec: ReleaseSpec, bins: int) -> Any:
    """The records as cell indices (UInt32, null for null) under internal column names c0, c1, ..."""
    import polars as pl

    data = {}
    for i, (name, col) in enumerate(spec.columns.items()):
        idx = grid.cell_index(train[name], col, bins)
        cells = pd.array(idx, dtype="UInt32")
        cells[train[name].isna().to_numpy()] = pd.NA
        data[f"c{i}"] = pl.from_pandas(pd.Series(cells, name=f"c{i}")).cast(pl.UInt32)
    return pl.DataFrame(data)


def _algorithm(gen: MBISpec, names: dict[str, str]) -> Any:
    """OpenDP's algorithm for ``gen``; with an ``anchor``, ``Sequential([algorithm, Fixed(anchor pairs)])``.

    ``names`` maps spec column names to the indexed frame's (c0, c1, ...). The algorithm runs first: MST
    then selects on the one-way model, as without an anchor. Run second, its selection scored every pair on
    the anchor's model: on adult (epsilon 1) the same TSTR, but ~1.3x the fit time and 3.2 GB instead of
    2.6 GB of peak memory. The final model is fitted to every measurement.
    """
    dp = _opendp()
    if isinstance(gen, AIMGeneratorSpec):
        algorithm = dp.mbi.AIM(queries=gen.queries, max_size=gen.max_size, rounds=gen.rounds,
                               measure_split=gen.measure_split, oneway_split=gen.oneway_split)
    else:
        algorithm = dp.mbi.MST(num_selections=gen.num_selections, measure_split=gen.measure_split,
                               oneway_split=gen.oneway_split)
    if gen.anchor is None:
        return algorithm
    anchor = names[gen.anchor]
    pairs = [dp.mbi.Count(by=(anchor, other)) for other in names.values() if other != anchor]
    # The top level reads oneway/oneway_split from the outer algorithm: the same one-way split as without.
    return dp.mbi.Sequential(algorithms=[algorithm, dp.mbi.Fixed(queries=pairs)],
                             weights=[1.0 - gen.anchor_share, gen.anchor_share], oneway_split=gen.oneway_split)


def make_measurement(spec: ReleaseSpec, *, rho: float) -> Any:
    """OpenDP's AIM or MST contingency-table measurement on the indexed frame, spending ``rho`` (zCDP).

    Reads no data: the keys are the public cells of each column. Its input is a polars LazyFrame of
    :func:`_index`; its privacy unit is one record (symmetric distance 1).
    """
    import polars as pl

    dp = _opendp()
    gen = spec.generator
    if not isinstance(gen, AIMGeneratorSpec | MSTGeneratorSpec):
        raise InternalError(f"the aim/mst generator got a `{gen.kind}` generator spec")
    names = [f"c{i}" for i in range(len(spec.columns))]
    domain = dp.lazyframe_domain([dp.series_domain(n, dp.option_domain(dp.atom_domain(T=dp.u32))) for n in names])
    plan = pl.LazyFrame(schema=dict.fromkeys(names, pl.UInt32))
    t_plan = dp.t.make_stable_lazyframe(domain, dp.symmetric_distance(), plan, MO="FrameDistance<SymmetricDistance>")
    keys = {n: list(range(_cells(col, gen.bins))) for n, col in zip(names, spec.columns.values(), strict=True)}
    m_table, _, _ = dp.mbi.make_contingency_table(
        t_plan.output_domain, t_plan.output_metric, dp.zero_concentrated_divergence(), d_in=t_plan.map(1),
        d_out=rho, keys=keys, algorithm=_algorithm(gen, dict(zip(spec.columns, names, strict=True))),
    )
    return t_plan >> m_table


# -------------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True, slots=True, kw_only=True)
class _Conditional:
    """P(column | parents) as a table over (parents..., column); columns are spec positions."""

    column: int
    parents: tuple[int, ...]
    table: np.ndarray
    #: The model's joint marginal over (parents..., column), summing to 1; kept in memory after a fit only.
    joint: np.ndarray | None = None


def _conditionals(model: Any, spec: ReleaseSpec, bins: int) -> list[_Conditional]:
    """Forward-sampling tables of the fitted model along its junction tree's elimination order.

    The same decomposition as ``mbi.MarkovRandomField.synthetic_data``, in numpy, so sampling needs neither
    jax nor a global RNG. A non-nullable column's null cell is zeroed (post-processing).
    """
    from mbi import junction_tree, marginal_oracles

    cliques = [set(cl) for cl in model.cliques]
    jtree, order = junction_tree.make_junction_tree(model.domain, cliques)
    marginals = marginal_oracles.message_passing_stable(model.potentials.expand(list(jtree.nodes)))
    position = {f"c{i}": i for i in range(len(spec.columns))}
    cols = list(spec.columns.values())
    out: list[_Conditional] = []
    used: set[str] = set()
    for name in order[::-1]:
        relevant = used & set().union(*[cl for cl in cliques if name in cl])
        parents = tuple(sorted(relevant, key=position.__getitem__))
        used.add(name)
        table = np.asarray(marginals.project((*parents, name)).datavector(flatten=False), dtype=np.float64)
        table = np.clip(table, 0.0, None)
        col = cols[position[name]]
        if not col.nullable:
            table[..., _cells(col, bins)] = 0.0
        joint = table / max(float(table.sum()), 1e-300)
        total = table.sum(axis=-1, keepdims=True)
        uniform = np.ones_like(table) / table.shape[-1]
        if not col.nullable:
            uniform[..., _cells(col, bins)] = 0.0
            uniform /= uniform.sum(axis=-1, keepdims=True)
        table = np.where(total > 0, table / np.where(total > 0, total, 1.0), uniform)
        out.append(_Conditional(column=position[name], parents=tuple(position[p] for p in parents), table=table,
                                joint=joint))
    return out


class GraphicalModel:
    """A fitted AIM or MST model: conditional tables in sampling order. Sampling is post-processing."""

    def __init__(self, spec: ReleaseSpec, *, kind: str, bins: int, conditionals: list[_Conditional]) -> None:
        self.spec = spec
        self.kind = kind
        self.bins = bins
        self.conditionals = conditionals

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "kind": self.kind, "bins": self.bins,
                "order": [{"column": c.column, "parents": list(c.parents)} for c in self.conditionals]}
        tables: dict[str, Any] = {f"t{i}": c.table for i, c in enumerate(self.conditionals)}
        np.savez(directory / "conditionals.npz", **tables)
        (directory / "mbi.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path, *, spec: ReleaseSpec) -> GraphicalModel:
        """Raises GeneratorError: ``directory`` holds no model of this spec's generator kind."""
        try:
            meta = json.loads((directory / "mbi.json").read_text())
            if meta.get("format") != _FORMAT or meta.get("kind") != spec.generator.kind:
                raise GeneratorError(f"{directory}: not a saved {spec.generator.kind} model")
            with np.load(directory / "conditionals.npz", allow_pickle=False) as tables:
                conditionals = [_Conditional(column=int(o["column"]), parents=tuple(int(p) for p in o["parents"]),
                                             table=tables[f"t{i}"]) for i, o in enumerate(meta["order"])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GeneratorError(f"{directory}: not a saved {spec.generator.kind} model "
                                 f"({exc.__class__.__name__})") from exc
        return cls(spec, kind=str(meta["kind"]), bins=int(meta["bins"]), conditionals=conditionals)

    def targets(self) -> list[Target]:
        """The model's one-way marginal of every column and its two-way marginal of every (parent, column)
        pair of its factorisation (for MST: the spanning tree it measured), on its grid.

        Post-processing of the fitted model. Only a model fitted in this process has them (they are not
        saved); raises InternalError otherwise.
        """
        out: list[Target] = []
        for cond in self.conditionals:
            if cond.joint is None:
                raise InternalError("the marginal model's joint tables are kept only after a fit")
            axes = len(cond.parents)
            out.append(Target(columns=(cond.column,), table=cond.joint.sum(axis=tuple(range(axes)))))
            for k, parent in enumerate(cond.parents):
                others = tuple(a for a in range(axes) if a != k)
                pair = cond.joint.sum(axis=others)  # axes (parent, column)
                out.append(Target(columns=(parent, cond.column), table=pair))
        return out

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        cells = np.zeros((len(self.spec.columns), rows), dtype=np.int64)
        for cond in self.conditionals:  # parents are always sampled before their children
            cdf = np.cumsum(cond.table, axis=-1)
            rows_cdf = cdf[tuple(cells[p] for p in cond.parents)] if cond.parents else np.broadcast_to(cdf, (rows,
                                                                                                              cdf.size))
            u = rng.random(rows) * rows_cdf[:, -1]
            cells[cond.column] = np.minimum((rows_cdf < u[:, None]).sum(axis=1), cdf.shape[-1] - 1)
        data = {name: self._decode(col, cells[i], rng) for i, (name, col) in enumerate(self.spec.columns.items())}
        return conform(pd.DataFrame(data), self.spec)

    def _decode(self, col: ColumnSpec, cells: np.ndarray, rng: np.random.Generator) -> pd.Series:
        """Values of cells: the category, or uniform inside the numeric cell; the last cell is null."""
        if isinstance(col, TextColumn):
            raise InternalError("a text column reached the aim/mst generator")
        return grid.decode_cells(col, cells, self.bins, rng.random(len(cells)))


# -------------------------------------------------------------------------------------------- backends


class _MBIBackend:
    kind = ""

    def fit(
        self,
        train: pd.DataFrame,
        *,
        spec: ReleaseSpec,
        plan: BudgetPlan,
        account: ReleaseAccount,
        noise: NoiseSource,
        workdir: Path,
    ) -> GraphicalModel:
        """Fit OpenDP's AIM or MST on the training rows, indexed on the public grid.

        Records outside the spec's domains are first repaired on their own (:func:`safesynth.repair.repair_records`).

        Privacy:
            Spends the plan's ``generator`` stage: OpenDP's measurement at the largest ``rho`` (zCDP) whose
            OpenDP conversion meets the stage's (epsilon, delta), under add/remove one record. Recorded in
            ``account`` as stage ``generator``: epsilon is OpenDP's map of the fitted measurement at the stage's
            delta; the event is ``rho``-zCDP, or under PLD randomized response at that epsilon with the delta
            as ``extra_delta`` (see the module docstring). ``noise`` is unused: OpenDP samples the noise securely itself.
        """
        del noise, workdir  # OpenDP draws its own noise; nothing is written while fitting
        gen = spec.generator
        if not isinstance(gen, AIMGeneratorSpec | MSTGeneratorSpec) or gen.kind != self.kind:
            raise InternalError(f"the {self.kind} generator got a `{gen.kind}` generator spec")
        train = repair_records(train, spec).frame
        stage = plan.stage("generator")
        rho = calibrate_rho(epsilon=stage.epsilon, delta=stage.delta)
        if isinstance(gen, MSTGeneratorSpec):
            rho = mst_rho(rho, gen=gen, columns=len(spec.columns))
        measurement = make_measurement(spec, rho=rho)
        spent_rho = float(measurement.map(1))
        epsilon = zcdp_epsilon(measurement, d_in=1, delta=stage.delta)
        if not (spent_rho <= rho and epsilon <= stage.epsilon):
            raise InternalError(f"the {self.kind} measurement spends epsilon {epsilon:.6g} (rho {spent_rho:.6g}), "
                                f"above its stage's {stage.epsilon:.6g}")
        # zCDP is what OpenDP's map states; an accountant that cannot compose it (PLD) gets the worst case
        # of the converted bound: randomized response at epsilon plus delta as a bad event.
        event = dp_event.ZCDpEvent(rho=spent_rho)
        zcdp = supports(event, plan.accountant)
        account.add(StageSpend(  # committed before the measurement reads the records
            stage="generator", event=event if zcdp else pure_dp_event(epsilon),
            epsilon=epsilon, delta=stage.delta, extra_delta=0.0 if zcdp else stage.delta,
            mechanism=f"{self.kind} (opendp.extras.mbi, zCDP)", secure_noise=True,
            detail={"rho": spent_rho, "bins": gen.bins,
                    "cells": {name: _cells(col, gen.bins) for name, col in spec.columns.items()}},
        ))
        table = measurement(_index(train, spec, gen.bins).lazy())
        return GraphicalModel(spec, kind=self.kind, bins=gen.bins,
                              conditionals=_conditionals(table.model, spec, gen.bins))

    def load(self, directory: Path, *, spec: ReleaseSpec) -> GraphicalModel:
        return GraphicalModel.load(directory, spec=spec)


class AIMBackend(_MBIBackend):
    kind = "aim"


class MSTBackend(_MBIBackend):
    kind = "mst"

