"""The generator interface every synthesizer implements.

A generator is fitted on the *training* rows (the holdout is never passed in), spends exactly the
budget the plan gives its stages (``plan.stage("generator")``, and ``"condition"`` when it conditions on a
noisy histogram), records every spend in the release account, and returns a fitted model that can be
saved, loaded in another process (a Dask worker), and sampled per shard.

A generator that makes its rows while fitting (``incontext``: generating reads private examples) also has
``rows_available``, the rows its budget bought (a DP output); the fit stage then publishes
``min(sampling.rows, rows_available)`` rows, each once. The other generators sample any number of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pandas as pd

from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import BudgetPlan, StageBudget
from safesynth.spec import ReleaseSpec

__all__ = ["FittedGenerator", "GeneratorBackend", "fit_within"]


class FittedGenerator(Protocol):
    """A fitted synthesizer. Sampling reads no private data: it is post-processing."""

    kind: str

    def save(self, directory: Path) -> None:
        """Write everything needed to sample into ``directory`` (created if missing)."""
        ...

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        """``rows`` synthetic rows with the spec's columns and declared dtypes.

        Deterministic for a fixed ``(rows, seed)``: a shard is reproducible on retry.
        """
        ...


class GeneratorBackend(Protocol):
    kind: str

    def fit(
        self,
        train: pd.DataFrame,
        *,
        spec: ReleaseSpec,
        plan: BudgetPlan,
        account: ReleaseAccount,
        noise: NoiseSource,
        workdir: Path,
    ) -> FittedGenerator:
        """Fit on ``train`` with DP, spending the plan's generator stages and recording them in ``account``."""
        ...

    def load(self, directory: Path, *, spec: ReleaseSpec) -> FittedGenerator:
        """Load a fitted generator saved by :meth:`FittedGenerator.save`."""
        ...


_Fitted = TypeVar("_Fitted")


def fit_within(fit: Callable[..., _Fitted], train: pd.DataFrame, *, spec: ReleaseSpec, parent: StageBudget, share: float, delta: float,
               account: ReleaseAccount, noise: NoiseSource, workdir: Path, as_stage: str,
               detail: dict[str, Any]) -> tuple[_Fitted, float]:
    """Fit another generator inside a share of ``parent`` (the generator stage); returns (model, delta spent).

    ``fit`` is a backend's ``fit``; it gets a plan whose only stage is ``generator`` with ``share`` of the
    parent's epsilon (and fraction) and ``delta``, and its own account. Its spends are then added to
    ``account`` as ``as_stage``, with ``detail`` merged in, so the release's account shows one stage per use.

    Privacy:
        Spends what the inner generator spends, at most ``share * parent.epsilon`` and ``delta``.
    """
    plan = BudgetPlan(epsilon=parent.epsilon, delta=parent.delta, accountant=spec.privacy.accountant,
                      stages=(StageBudget(name="generator", fraction=parent.fraction * share,
                                          epsilon=share * parent.epsilon, delta=delta),))
    own = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    model = fit(train, spec=spec, plan=plan, account=own, noise=noise, workdir=workdir)
    for spend in own.spends:
        account.add(replace(spend, stage=as_stage, detail={**spend.detail, **detail}))
    return model, sum(s.delta for s in own.spends)
