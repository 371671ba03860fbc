"""The ``marginals`` generator: an independent noisy histogram per column over its declared domain.

It is the baseline every other generator must beat, and it exercises DP noise injection end to end.

Domains (all from the spec, never from the data; the cells are :mod:`~safesynth.generator.grid`'s):
  * categorical: the declared categories; boolean: false/true;
  * integer: one cell per value when the range has at most ``bins`` values, else ``bins`` equal-width
    integer bins; float and datetime: ``bins`` equal-width bins; a value is drawn uniformly inside its bin;
  * text: a histogram of lengths over ``bins`` bins of [0, max_length] plus a character distribution over a
    public alphabet (printable ASCII and one "other" cell shown as a space). Each record adds *its own*
    normalised character frequencies, so it moves that vector by at most 1 in L1 (and in L2);
  * every nullable column has one more cell for null.

Privacy:
    All histograms form one vector. Adding or removing one record changes each column's histogram by 1
    in one cell, and a text column's character vector by at most 1 in L1/L2. With ``k`` columns of which
    ``t`` are text, the vector's L1 sensitivity is ``k + t`` and its L2 sensitivity ``sqrt(k + t)``. One
    Laplace (L1) or Gaussian (L2) mechanism calibrated to the plan's ``generator`` stage adds the noise;
    everything after it (clipping, normalising, sampling) is post-processing.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from safesynth.errors import InternalError
from safesynth.generator import grid
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, compose_epsilon
from safesynth.privacy.mechanisms import GaussianMechanism, make_mechanism
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import BudgetPlan
from safesynth.repair import repair_records
from safesynth.schema import conform
from safesynth.spec import (
    ColumnSpec,
    MarginalsGeneratorSpec,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["MarginalsBackend", "MarginalsModel"]

ALPHABET = string.printable[:95]  # printable ASCII from digits to space, no tabs/newlines
_FORMAT = "safesynth.marginals/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layout:
    """Where each column's cells sit in the joint vector."""

    column: str
    part: str  # "values" or "chars"
    start: int
    size: int


def _layout(spec: ReleaseSpec, bins: int) -> list[_Layout]:
    out, start = [], 0
    for name, col in spec.columns.items():
        size = grid.value_cells(col, bins) + (1 if col.nullable else 0)
        out.append(_Layout(column=name, part="values", start=start, size=size))
        start += size
        if isinstance(col, TextColumn):
            out.append(_Layout(column=name, part="chars", start=start, size=len(ALPHABET) + 1))
            start += len(ALPHABET) + 1
    return out


def _char_frequencies(series: pd.Series) -> np.ndarray:
    """Sum over records of each record's normalised character frequencies (L1 contribution <= 1)."""
    total = np.zeros(len(ALPHABET) + 1)
    lookup = {ch: i for i, ch in enumerate(ALPHABET)}
    other = len(ALPHABET)
    for text in series.dropna().astype(str):
        if not text:
            continue
        counts = np.bincount([lookup.get(ch, other) for ch in text], minlength=len(ALPHABET) + 1)
        total += counts / counts.sum()
    return total


def _to_probabilities(noisy: np.ndarray) -> np.ndarray:
    p = np.clip(noisy, 0.0, None)
    s = p.sum()
    return p / s if s > 0 else np.full(len(p), 1.0 / len(p))


class MarginalsModel:
    """Fitted marginals: one probability vector per column part. Sampling is post-processing."""

    kind = "marginals"

    def __init__(self, spec: ReleaseSpec, bins: int, probabilities: dict[str, list[float]]) -> None:
        self.spec = spec
        self.bins = bins
        self.probabilities = {k: np.asarray(v, dtype=np.float64) for k, v in probabilities.items()}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "bins": self.bins,
                   "probabilities": {k: v.tolist() for k, v in self.probabilities.items()}}
        (directory / "marginals.json").write_text(json.dumps(payload))

    @classmethod
    def load(cls, directory: Path, *, spec: ReleaseSpec) -> MarginalsModel:
        payload = json.loads((directory / "marginals.json").read_text())
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{directory}: not a marginals model ({payload.get('format')!r})")
        return cls(spec, int(payload["bins"]), payload["probabilities"])

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        data = {name: self._sample_column(name, col, rows, rng) for name, col in self.spec.columns.items()}
        return conform(pd.DataFrame(data), self.spec)

    def _sample_column(self, name: str, col: ColumnSpec, rows: int, rng: np.random.Generator) -> pd.Series:
        p = self.probabilities[f"{name}/values"]
        cells = rng.choice(len(p), size=rows, p=p)
        u = rng.random(rows)
        if not isinstance(col, TextColumn):
            return grid.decode_cells(col, cells, self.bins, u)
        n_cells = grid.value_cells(col, self.bins)
        isnull = cells >= n_cells
        values = self._sample_text(name, col, np.minimum(cells, n_cells - 1), u, rng)
        values[isnull] = pd.NA
        return values

    def _sample_text(self, name: str, col: TextColumn, cells: np.ndarray, u: np.ndarray,
                     rng: np.random.Generator) -> pd.Series:
        edges = grid.edges(0, col.max_length, self.bins)
        lengths = np.clip(np.floor(edges[cells] + u * (edges[cells + 1] - edges[cells])), 1, col.max_length)
        chars_p = self.probabilities[f"{name}/chars"]
        alphabet = np.array(list(ALPHABET) + [" "])
        texts = ["".join(alphabet[rng.choice(len(chars_p), size=int(n), p=chars_p)]).strip() or "."
                 for n in lengths]
        return pd.Series(texts, dtype="str")


class MarginalsBackend:
    kind = "marginals"

    def fit(
        self,
        train: pd.DataFrame,
        *,
        spec: ReleaseSpec,
        plan: BudgetPlan,
        account: ReleaseAccount,
        noise: NoiseSource,
        workdir: Path,
    ) -> MarginalsModel:
        """Release one noisy joint vector of all column histograms.

        Records outside the spec's domains (declared or discovered) are first repaired on their own
        (:func:`safesynth.repair.repair_records`), so no single record can make the fit fail.

        Privacy:
            Spends the plan's ``generator`` stage (epsilon, delta) with the spec's mechanism on a vector of
            L1 sensitivity ``k + t`` and L2 sensitivity ``sqrt(k + t)`` under add/remove one record (see
            the module docstring). Recorded in ``account`` as stage ``generator``.
        """
        gen = spec.generator
        if not isinstance(gen, MarginalsGeneratorSpec):
            raise InternalError(f"the marginals generator got a `{gen.kind}` generator spec")
        train = repair_records(train, spec).frame  # records outside the domains: clamped, nulled or dropped
        stage = plan.stage("generator")
        layout = _layout(spec, gen.bins)
        counts = np.zeros(layout[-1].start + layout[-1].size)
        for part in layout:
            col = spec.columns[part.column]
            if part.part == "values":
                idx = grid.cell_index(train[part.column], col, gen.bins)
                counts[part.start : part.start + part.size] = np.bincount(idx, minlength=part.size)[: part.size]
            else:
                counts[part.start : part.start + part.size] = _char_frequencies(train[part.column])
        units = len(layout)  # k columns + t text character vectors
        mech = make_mechanism(
            spec.privacy.mechanism, l1_sensitivity=float(units), l2_sensitivity=math.sqrt(units),
            epsilon=stage.epsilon, delta=stage.delta, accountant=spec.privacy.accountant,
        )
        noisy = mech.release(counts, noise=noise)
        if isinstance(mech, GaussianMechanism):
            spent_eps = compose_epsilon([mech.event()], delta=stage.delta, accountant=spec.privacy.accountant)
            spent_delta = stage.delta
        else:
            spent_eps, spent_delta = mech.epsilon, 0.0
        account.add(StageSpend(
            stage="generator", event=mech.event(), epsilon=spent_eps, delta=spent_delta,
            mechanism=f"{spec.privacy.mechanism} histogram", secure_noise=noise.secure,
            detail={"cells": int(len(counts)), "l1_sensitivity": float(units), "l2_sensitivity": math.sqrt(units),
                    "scale": mech.scale},
        ))
        probabilities = {f"{p.column}/{p.part}": _to_probabilities(noisy[p.start : p.start + p.size]).tolist()
                         for p in layout}
        return MarginalsModel(spec, gen.bins, probabilities)

    def load(self, directory: Path, *, spec: ReleaseSpec) -> MarginalsModel:
        return MarginalsModel.load(directory, spec=spec)
