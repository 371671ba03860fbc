"""Calibrating sampled rows to DP marginals: oversample, rake, keep a weighted subset.

A generator's rows can drift from the table's low-order marginals (DP-SGD's noise blurs what a model
learns). When a DP marginal model of the same table exists (the llm's ``warm_start: mst``), its one-way
marginals and the two-way marginals it measured are targets the rows can be pulled towards:

1. sample ``oversample`` times as many candidate rows as asked for;
2. give every candidate a weight by raking (iterative proportional fitting): each target marginal in
   turn, every candidate's weight is multiplied by target / current share of its cell, for a fixed number
   of sweeps; weights stay within [1/``MAX_WEIGHT``, ``MAX_WEIGHT``] times their mean, so a cell the noisy
   model emptied is thinned, not erased, and a few candidates cannot stand for a whole cell;
3. keep ``rows`` distinct candidates, in their sampled order: candidate i with probability
   min(1, c * weight_i), c such that the probabilities add up to ``rows`` (:func:`inclusion`), by systematic
   sampling in a random order.

Cells are those of the public grid (:mod:`safesynth.generator.grid`) with the marginal model's ``bins``,
so the targets line up with what the marginal model measured; values inside a cell stay as the generator
made them.

Privacy:
    Post-processing. The targets are a DP model's marginals (computed from its fitted tables, never from
    records) and the candidates are the generator's own samples; the selection randomness is seeded from
    the sampling seed (public) because it touches no record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safesynth.errors import GeneratorError, InternalError
from safesynth.generator import grid
from safesynth.spec import ReleaseSpec, TextColumn

__all__ = ["MAX_WEIGHT", "SWEEPS", "Calibration", "Target", "inclusion"]

#: Raking sweeps over all targets.
SWEEPS = 25
#: Largest weight, in multiples of the mean weight.
MAX_WEIGHT = 8.0
_FILE = "calibration.npz"


@dataclass(frozen=True, slots=True)
class Target:
    """A marginal to match: a probability table over the cells of ``columns`` (spec positions, in order)."""

    columns: tuple[int, ...]
    table: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """Targets on the public grid with ``bins``, and how many candidates to draw per kept row."""

    bins: int
    targets: tuple[Target, ...]
    oversample: int

    def cells(self, frame: pd.DataFrame, spec: ReleaseSpec) -> np.ndarray:
        """Grid cells of every non-text column of ``frame`` (columns x rows); nulls in the last cell."""
        out = np.zeros((len(spec.columns), len(frame)), dtype=np.int64)
        for i, (name, col) in enumerate(spec.columns.items()):
            if not isinstance(col, TextColumn):
                out[i] = grid.cell_index(frame[name], col, self.bins)
        return out

    def weights(self, cells: np.ndarray) -> np.ndarray:
        """Raking weights of the candidates (about mean 1, within [1/``MAX_WEIGHT``, ``MAX_WEIGHT``])."""
        n = cells.shape[1]
        w = np.ones(n, dtype=np.float64)
        flat = [(np.ravel_multi_index(tuple(cells[c] for c in t.columns), t.table.shape, mode="clip"),
                 t.table.ravel()) for t in self.targets]
        for _ in range(SWEEPS):
            for index, target in flat:
                current = np.bincount(index, weights=w, minlength=target.size)
                total = current.sum()
                if total <= 0:
                    raise InternalError("raking lost every candidate's weight")
                share = current / total
                ratio = np.divide(target, share, out=np.ones_like(target), where=share > 0)
                w *= ratio[index]
                w = np.clip(w / w.mean(), 1.0 / MAX_WEIGHT, MAX_WEIGHT)
        return w

    def select(self, candidates: pd.DataFrame, rows: int, *, spec: ReleaseSpec, seed: int) -> pd.DataFrame:
        """``rows`` distinct candidates, each kept with probability proportional to its raking weight
        (capped at 1); deterministic for the same candidates and ``seed``."""
        if rows >= len(candidates):
            return candidates.reset_index(drop=True)
        keep = _systematic(inclusion(self.weights(self.cells(candidates, spec)), rows),
                           np.random.default_rng(np.random.SeedSequence([seed, 0xCA11B])))
        return candidates.iloc[keep].reset_index(drop=True)

    def save(self, directory: Path) -> None:
        arrays: dict[str, Any] = {f"t{i}": t.table for i, t in enumerate(self.targets)}
        arrays["meta"] = np.asarray([self.bins, self.oversample], dtype=np.int64)
        for i, t in enumerate(self.targets):
            arrays[f"c{i}"] = np.asarray(t.columns, dtype=np.int64)
        np.savez(Path(directory) / _FILE, **arrays)

    @classmethod
    def load(cls, directory: Path) -> Calibration | None:
        """The calibration saved beside a generator, or None when it was saved without one."""
        path = Path(directory) / _FILE
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                bins, oversample = (int(v) for v in data["meta"])
                count = sum(1 for k in data.files if k.startswith("t"))
                targets = tuple(Target(columns=tuple(int(c) for c in data[f"c{i}"]), table=data[f"t{i}"])
                                for i in range(count))
        except (OSError, KeyError, ValueError) as exc:
            raise GeneratorError(f"{path}: not a saved calibration ({exc.__class__.__name__})") from exc
        return cls(bins=bins, targets=targets, oversample=oversample)


def inclusion(weights: np.ndarray, rows: int) -> np.ndarray:
    """Inclusion probabilities proportional to ``weights``, capped at 1, adding up to ``rows``."""
    pi = np.zeros(len(weights), dtype=np.float64)
    free = weights > 0
    target = float(rows)
    while True:
        pi[free] = weights[free] * target / weights[free].sum()
        over = free & (pi >= 1.0)
        if not over.any():
            return pi
        pi[over] = 1.0
        free &= ~over
        target = rows - float((pi >= 1.0).sum())  # what the uncapped candidates share
        if not free.any():
            return pi


def _systematic(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices kept by systematic sampling on ``pi`` (sum = n, each <= 1) in a random order: exactly n
    distinct indices, index i with probability pi[i]; returned sorted."""
    order = rng.permutation(len(pi))
    cum = np.cumsum(pi[order])
    n = int(round(cum[-1]))
    cum *= n / cum[-1]  # no rounding gap after the last point
    points = rng.random() + np.arange(n)
    picked = order[np.minimum(np.searchsorted(cum, points, side="right"), len(pi) - 1)]
    return np.sort(picked)
