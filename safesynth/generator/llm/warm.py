"""Warm start of the llm generator: pretrain on rows of a DP marginal model before DP-SGD (``warm_start: mst``).

A share of the generator stage's epsilon and delta (``LLMGeneratorSpec.warm_share``: ``warm_start_share``, by
default 0.7 with the label's pairs and 0.3 without) fits OpenDP's MST on the training rows
(:mod:`safesynth.generator.mbi`): all one-way marginals and a maximum spanning tree of two-way marginals,
measured with Gaussian noise; with a label (``condition_on``, else ``audit.target_column``), the
label's two-way marginal with every other column too (MST's ``anchor``, ``warm_start_label_pairs``). Rows
sampled from that model are a DP output, so training the language model on them without noise
(:func:`~safesynth.generator.llm.training.pretrain`) is post-processing;
DP-SGD then fine-tunes on the real rows with the rest of the stage. The model starts from the marginals'
structure instead of from random weights, which DP-SGD's few noisy steps would otherwise have to learn.

Privacy:
    Add/remove one record. Spends the MST stage, recorded as ``generator.warm_start`` (its event and
    accounting as :mod:`safesynth.generator.mbi` states); the sampled rows, their order and the pretraining
    read no private data. The number of rows sampled is a function of the noisy row count (a DP output).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from safesynth.errors import SpecError
from safesynth.generator.base import fit_within
from safesynth.generator.llm.encoding import RowCodec
from safesynth.generator.llm.grammar import Grammar
from safesynth.generator.llm.model import LanguageModel, torch_threads
from safesynth.generator.llm.training import TrainingRows, pretrain
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import StageBudget
from safesynth.spec import LLMGeneratorSpec, MSTGeneratorSpec, ReleaseSpec, TextColumn

if TYPE_CHECKING:
    from safesynth.generator.mbi import GraphicalModel

__all__ = ["MAX_WARM_ROWS", "MIN_WARM_ROWS", "check_warm_start", "warm_budget", "warm_start"]

log = logging.getLogger("safesynth")

#: Rows sampled from the marginal model: the noisy row count, within these bounds.
MIN_WARM_ROWS = 1_000
MAX_WARM_ROWS = 200_000
#: Rows per pretraining step.
WARM_BATCH = 256


def check_warm_start(spec: ReleaseSpec) -> None:
    """``warm_start: mst`` needs two or more columns, no text column and ``privacy.delta > 0`` (reads no data).

    Raises:
        SpecError: the spec cannot be warm started.
    """
    gen = spec.generator
    if not isinstance(gen, LLMGeneratorSpec) or gen.warm_start != "mst":
        return
    texts = [name for name, col in spec.columns.items() if isinstance(col, TextColumn)]
    if texts:
        raise SpecError(f"`generator.warm_start: {gen.warm_start}` models cells, not free text: the spec has text "
                        f"column(s) {', '.join(texts)}; set warm_start: none")
    if len(spec.columns) < 2:
        raise SpecError("`generator.warm_start: mst` models pairs of columns: the spec has one column; set "
                        "warm_start: none")
    if not spec.privacy.delta > 0:
        raise SpecError("`generator.warm_start: mst` measures with Gaussian noise (zCDP), which converts to "
                        "(epsilon, delta) only with `privacy.delta` > 0; set warm_start: none")


def warm_budget(stage: StageBudget, gen: LLMGeneratorSpec, target_column: str | None) -> tuple[float, float]:
    """The warm start's (epsilon, delta): its share (:meth:`LLMGeneratorSpec.warm_share`, public) of the
    generator stage's (0, 0 without one)."""
    if gen.warm_start != "mst":  # none, or auto outside a ReleaseSpec (which resolves it)
        return 0.0, 0.0
    share = gen.warm_share(target_column)
    return share * stage.epsilon, share * stage.delta


def warm_start(lm: LanguageModel, train: pd.DataFrame, *, spec: ReleaseSpec, stage: StageBudget, codec: RowCodec,
               grammar: Grammar, order: list[int], noisy_rows: float, account: ReleaseAccount, noise: NoiseSource,
               workdir: Path) -> GraphicalModel:
    """Fit MST on ``train`` with the warm start's share, sample rows from it, pretrain ``lm`` on them.

    Returns the fitted MST model (its marginals can calibrate sampling, :mod:`safesynth.generator.calibrate`).
    Records the MST spend in ``account`` as ``generator.warm_start``.

    Privacy:
        Spends :func:`warm_budget` (OpenDP's MST); everything after it is post-processing.
    """
    from safesynth.generator.mbi import MSTBackend  # imports polars and mbi: only when warm starting

    gen = spec.generator
    if not isinstance(gen, LLMGeneratorSpec):
        raise SpecError("the warm start is for the llm generator")
    check_warm_start(spec)
    label = spec.audit.target_column
    _, delta = warm_budget(stage, gen, label)
    anchor = gen.warm_anchor(label)
    mst = MSTGeneratorSpec(kind="mst", anchor=anchor, bins=gen.warm_start_bins)
    log.info("warm start: fitting MST (%d-cell grid%s)", gen.warm_start_bins,
             f", with {anchor}'s pairs" if anchor else "")
    model, _ = fit_within(MSTBackend().fit, train, spec=spec.model_copy(update={"generator": mst}),
                          parent=stage, share=gen.warm_share(label), delta=delta, account=account, noise=noise,
                          workdir=workdir, as_stage="generator.warm_start",
                          detail={"purpose": "rows to pretrain on before DP-SGD", "anchor": anchor})
    rows = int(np.clip(round(noisy_rows), MIN_WARM_ROWS, MAX_WARM_ROWS))
    synthetic = model.sample(rows, seed=spec.sampling.seed)
    log.info("warm start: MST fitted; pretraining on %d of its rows", rows)
    public = TrainingRows(codec, grammar, codec.encode_cells(synthetic), lm=lm, order=order)
    with torch_threads():
        steps = pretrain(lm, public, epochs=gen.warm_start_epochs, batch_size=WARM_BATCH,
                         learning_rate=gen.learning_rate, rng=np.random.default_rng([spec.sampling.seed, 0x3A7]))
    log.info("warm start: pretrained on %d rows of the MST model (%d steps) before DP-SGD", rows, steps)
    return model
