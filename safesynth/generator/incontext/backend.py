"""`generator: {kind: incontext}`: training-free DP text generation with a pretrained LM, in context.

Tang et al., ICLR 2024 (arXiv 2309.11765), once-per-row variant (:mod:`.mechanism`). The texts are generated
in :meth:`InContextBackend.fit`, because generating reads private examples: decoded on the sampling cluster's
workers (``generator.distributed``, the default; :mod:`.worker`) or in this process, with every subsample
drawn and every noise added here, on the driver. The fitted generator holds the generated rows (a DP
output) and sampling draws from that pool.

Columns: the text column is generated in context; the ``condition_on`` column (if any) is drawn from a noisy
histogram and each text is generated from private examples of its value only; every other column is drawn
from noisy one-way histograms (the ``marginals`` generator on those columns), independently of the text.

Stages spent (all recorded in the release account):

* ``condition`` (only with ``condition_on``): a noisy histogram of that column over its declared domain.
* ``generator.others`` (only with other columns): ``OTHERS_FRACTION`` of the generator stage, the
  marginals generator's histograms of the other columns.
* ``generator.count``: a Laplace row count (``COUNT_FRACTION`` of the generator stage's epsilon) that sets
  the sample rate; the true row count never sets a parameter.
* ``generator.incontext``: the rest, ``R`` texts of ``max_new_tokens`` noisy-argmax tokens each, ``R`` the
  most the rest buys (at most ``sampling.rows``; a DP output, stated in the spend's detail as
  ``rows_bought`` and published as the release's row count).

Randomness: the Poisson subsample of each text (which records, in which prompt) is the mechanism's own
randomness and comes from OS entropy (from the spec's seed only with a test noise source, ``secure =
False``); the Gaussian noise comes from the injected noise source (OpenDP in releases); the label of each
text and the sampling of the pool come from the spec's seed.

Privacy:
    Add/remove one record. At most ``plan.stage("generator")`` (count + others + generation, basic
    composition) plus ``plan.stage("condition")``. The generation's L2 sensitivity per token is ``sqrt(2)``
    (see :mod:`.mechanism`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from safesynth.errors import GeneratorError, InternalError, SpecError
from safesynth.generator.base import fit_within
from safesynth.generator.incontext.mechanism import (
    MAX_SAMPLE_RATE,
    SENSITIVITY,
    GenerationPlan,
    plan_generation,
    row_event,
    sample_rate_for,
)
from safesynth.generator.incontext.prompt import (
    InContextColumns,
    example_line,
    prompt_label,
    prompt_labels,
    resolve_columns,
)
from safesynth.generator.incontext.worker import TextJob, WorkerConfig, generate, open_workers, partition_job
from safesynth.generator.llm.backend import ConditionHistogram, release_condition_histogram
from safesynth.generator.llm.encoding import NULL, CategoryCodec
from safesynth.generator.llm.training import COUNT_FRACTION, release_row_count
from safesynth.generator.marginals import MarginalsBackend, MarginalsModel
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, compose_epsilon
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import BudgetPlan, StageBudget
from safesynth.repair import repair_records
from safesynth.schema import conform
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    InContextGeneratorSpec,
    MarginalsGeneratorSpec,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["OTHERS_FRACTION", "FittedInContext", "InContextBackend", "check_buys_a_text"]

log = logging.getLogger("safesynth")

#: Share of the generator stage for the histograms of the columns other than the text and the condition.
OTHERS_FRACTION = 0.1
_META = "safesynth_incontext.json"
_FORMAT = 1


def _gen(spec: ReleaseSpec) -> InContextGeneratorSpec:
    if not isinstance(spec.generator, InContextGeneratorSpec):
        raise SpecError(f"`generator.kind` ({spec.generator.kind!r}) must be 'incontext' for this backend")
    return spec.generator


def _others_spec(spec: ReleaseSpec, others: tuple[str, ...]) -> ReleaseSpec:
    return spec.model_copy(update={"columns": {n: spec.columns[n] for n in others},
                                   "generator": MarginalsGeneratorSpec(kind="marginals")})


def _condition_codec(spec: ReleaseSpec, name: str) -> CategoryCodec:
    col = spec.columns[name]
    if isinstance(col, BooleanColumn):
        return CategoryCodec(name=name, nullable=col.nullable, labels=("false", "true"), tokens=(10, 11),
                             boolean=True)
    if not isinstance(col, CategoricalColumn) or col.categories is None:
        raise InternalError(f"`generator.condition_on` ({name}) has no resolved categories")
    return CategoryCodec(name=name, nullable=col.nullable, labels=col.categories,
                         tokens=tuple(10 + i for i in range(len(col.categories))))


def _label_value(codec: CategoryCodec, token: int) -> Any:
    return codec.decode((token,))


def subsample_rng(*, secure: bool, seed: int) -> tuple[np.random.Generator, str]:
    """The subsample's secret generator: OS entropy, or the spec's seed for a test noise source only."""
    if secure:
        return np.random.default_rng(secrets.randbits(128)), "os-entropy"
    return np.random.default_rng([seed, 0x1C7]), "spec-seed (insecure test noise source)"


def _progress(rows: int) -> tqdm[Any]:
    setting = os.environ.get("SAFESYNTH_PROGRESS")
    disable = None if setting not in ("0", "1") else setting == "0"
    return tqdm(total=rows, desc="in-context DP", unit="row", file=sys.stderr, mininterval=5.0, disable=disable)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Groups:
    """Label groups: the records (row positions) of each, and the value each generated row gets."""

    members: tuple[np.ndarray, ...]
    values: tuple[Any, ...]
    prompts_label: tuple[str | None, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prepared:
    """After every spend: the label groups, the texts planned, the other columns' model, the subsample rng."""

    groups: _Groups
    schedule: GenerationPlan
    others: MarginalsModel | None
    rng: np.random.Generator


def check_buys_a_text(spec: ReleaseSpec) -> None:
    """With an explicit ``noise_multiplier``, the budget must buy one text even at the highest sample rate.

    The sample rate is at most :data:`~.mechanism.MAX_SAMPLE_RATE` and a text costs more at a higher rate,
    so a spec that passes always buys at least one text; one that fails is refused before any budget is
    reserved (the default noise multiplier is calibrated to the budget and always buys every text).
    Reads no data: the plan and the spec only.

    Raises:
        SpecError: one text at the highest rate costs more than the generation's share of the budget.
    """
    gen = _gen(spec)
    if gen.noise_multiplier is None:
        return
    from safesynth.privacy.planner import plan_budget

    stage = plan_budget(spec).stage("generator")
    others = bool(resolve_columns(spec).others)
    epsilon = stage.epsilon * (1.0 - COUNT_FRACTION - (OTHERS_FRACTION if others else 0.0))
    delta = stage.delta - (OTHERS_FRACTION * stage.delta if others and spec.privacy.mechanism == "gaussian" else 0.0)
    event = row_event(sample_rate=MAX_SAMPLE_RATE, noise_multiplier=gen.noise_multiplier, tokens=gen.max_new_tokens)
    if compose_epsilon([event], delta=delta, accountant=spec.privacy.accountant) > epsilon:
        raise SpecError(f"`generator.noise_multiplier` ({gen.noise_multiplier}) is too small for the budget: one "
                        f"text of {gen.max_new_tokens} tokens would cost more than the generation's epsilon "
                        f"({epsilon:.3g}); raise it, or leave it unset to calibrate it to the budget")


class InContextBackend:
    """Generates texts in context with DP and returns them as :class:`FittedInContext`."""

    kind = "incontext"

    def fit(self, train: pd.DataFrame, *, spec: ReleaseSpec, plan: BudgetPlan, account: ReleaseAccount,
            noise: NoiseSource, workdir: Path) -> FittedInContext:
        """Spend ``condition`` (if any), ``generator.others`` (if any), ``generator.count`` and
        ``generator.incontext``, and generate the texts the budget buys.

        Privacy:
            At most ``plan.stage("generator")`` by basic composition (count: ``COUNT_FRACTION`` of its
            epsilon; others: ``OTHERS_FRACTION`` of its epsilon and, with the Gaussian mechanism, of its
            delta; generation: the rest) plus ``plan.stage("condition")``. Add/remove one record.
        """
        gen = _gen(spec)
        columns = resolve_columns(spec)
        stage = plan.stage("generator")
        if not stage.delta > 0:
            raise SpecError("`privacy.delta` (0) must be > 0 for the in-context generator (Gaussian noise)")
        text_col = spec.columns[columns.text]
        if not isinstance(text_col, TextColumn):
            raise InternalError("the in-context text column is not a text column")
        config = WorkerConfig(model=gen.model, base_dir=str(spec.base_dir), device=gen.device, top_k=gen.top_k,
                              temperature=gen.temperature, max_new_tokens=gen.max_new_tokens, column=columns.text,
                              max_chars=text_col.max_length, labels=prompt_labels(spec, columns))
        # Everything that can fail without spending (the workers, the model) comes before the first release.
        with open_workers(spec, config, distributed=gen.distributed, texts=spec.sampling.rows) as workers:
            train = repair_records(train, spec).frame
            ready = self._prepare(train, spec, plan, columns, account=account, noise=noise, workdir=workdir)
            texts = self._generate(train[columns.text], ready, workers, noise=noise, text_col=text_col,
                                   column=columns.text, prompts=gen.prompts)
        groups, schedule, others = ready.groups, ready.schedule, ready.others
        pool = {columns.text: texts}
        if columns.condition is not None:
            pool[columns.condition] = [groups.values[g] for g in schedule.labels]
        spends = [s for s in account.spends if s.stage in ("condition", "generator.others", "generator.count",
                                                          "generator.incontext")]
        privacy = {"stages": [s.to_dict() for s in spends]}
        return FittedInContext(spec=spec, pool=pool, others=others, privacy=privacy)

    def _prepare(self, train: pd.DataFrame, spec: ReleaseSpec, plan: BudgetPlan, columns: InContextColumns, *,
                 account: ReleaseAccount, noise: NoiseSource, workdir: Path) -> _Prepared:
        """Spend every stage (the generation's before its first noisy step) and plan the texts."""
        gen, stage = _gen(spec), plan.stage("generator")
        condition, codec = None, None
        if columns.condition is not None:
            codec = _condition_codec(spec, columns.condition)
            condition, spend = release_condition_histogram(train, codec, spec=spec, plan=plan, noise=noise)
            account.add(spend)
        others, others_delta = self._fit_others(train, spec, columns, stage, account=account, noise=noise,
                                                 workdir=workdir)
        noisy_rows, count_spend = release_row_count(len(train), epsilon=COUNT_FRACTION * stage.epsilon, noise=noise)
        account.add(replace(count_spend, detail={**count_spend.detail, "purpose": "sets the sample rate"}))
        groups = self._groups(train, columns, codec, condition)
        labels, rates = self._labels(spec, gen, condition, noisy_rows)
        epsilon = stage.epsilon * (1.0 - COUNT_FRACTION - (OTHERS_FRACTION if others is not None else 0.0))
        delta = stage.delta - others_delta
        schedule = plan_generation(labels=labels, sample_rates=rates, tokens=gen.max_new_tokens,
                                   noise_multiplier=gen.noise_multiplier, epsilon=epsilon, delta=delta,
                                   accountant=plan.accountant)
        rng, seeding = subsample_rng(secure=bool(noise.secure), seed=spec.sampling.seed)
        account.add(self._spend(schedule, gen, delta=delta, accountant=plan.accountant, noise=noise,
                                seeding=seeding))  # committed before the first noisy step
        if schedule.rows == 0:  # check_buys_a_text (preflight) rules this out
            raise InternalError("the generator budget buys no text at `generator.noise_multiplier` "
                                f"({gen.noise_multiplier})")
        return _Prepared(groups=groups, schedule=schedule, others=others, rng=rng)

    @staticmethod
    def _fit_others(train: pd.DataFrame, spec: ReleaseSpec, columns: InContextColumns, stage: StageBudget, *,
                    account: ReleaseAccount, noise: NoiseSource,
                    workdir: Path) -> tuple[MarginalsModel | None, float]:
        if not columns.others:
            return None, 0.0
        delta = OTHERS_FRACTION * stage.delta if spec.privacy.mechanism == "gaussian" else 0.0
        model, spent = fit_within(MarginalsBackend().fit, train[list(columns.others)],
                                  spec=_others_spec(spec, columns.others), parent=stage, share=OTHERS_FRACTION,
                                  delta=delta, account=account, noise=noise, workdir=workdir,
                                  as_stage="generator.others", detail={"columns": len(columns.others)})
        return model, spent

    @staticmethod
    def _groups(train: pd.DataFrame, columns: InContextColumns, codec: CategoryCodec | None,
                condition: ConditionHistogram | None) -> _Groups:
        if codec is None or condition is None or columns.condition is None:
            return _Groups(members=(np.arange(len(train)),), values=(None,), prompts_label=(None,))
        series = train[columns.condition]
        members, values, labels = [], [], []
        for token in condition.tokens:
            value = None if token == NULL else _label_value(codec, token)
            if value is None:
                members.append(np.flatnonzero(series.isna().to_numpy()))
            else:
                members.append(np.flatnonzero((series == value).fillna(False).to_numpy(dtype=bool)))
            values.append(value)
            labels.append(prompt_label(columns.condition, value))
        return _Groups(members=tuple(members), values=tuple(values), prompts_label=tuple(labels))

    @staticmethod
    def _labels(spec: ReleaseSpec, gen: InContextGeneratorSpec, condition: ConditionHistogram | None,
                noisy_rows: float) -> tuple[list[int], list[float]]:
        """Each wanted text's label group (public seed, DP histogram) and each group's sample rate."""
        rows = spec.sampling.rows
        if condition is None:
            return [0] * rows, [sample_rate_for(noisy_rows, prompts=gen.prompts, shots=gen.shots)]
        drawn = condition.draw(rows, seed=spec.sampling.seed)
        index = {t: i for i, t in enumerate(condition.tokens)}
        rates = [sample_rate_for(max(0.0, noisy_rows) * p, prompts=gen.prompts, shots=gen.shots)
                 for p in condition.probabilities]
        return [index[int(t)] for t in drawn], rates

    @staticmethod
    def _spend(schedule: GenerationPlan, gen: InContextGeneratorSpec, *, delta: float, accountant: str,
               noise: NoiseSource, seeding: str) -> StageSpend:
        event = schedule.event()
        epsilon = compose_epsilon([event], delta=delta, accountant=accountant)
        return StageSpend(
            stage="generator.incontext", event=event, epsilon=epsilon, delta=delta,
            mechanism="in-context noisy argmax (poisson-subsampled gaussian)", secure_noise=bool(noise.secure),
            detail={"rows_bought": schedule.rows, "rows_per_label_charged": schedule.rows_per_label,
                    "sample_rate": schedule.sample_rate, "noise_multiplier": schedule.noise_multiplier,
                    "l2_sensitivity": SENSITIVITY, "tokens_per_row": schedule.tokens, "top_k": gen.top_k,
                    "prompts": gen.prompts, "shots": gen.shots, "accountant": accountant,
                    "subsample_rng": seeding, "variant": "subsample once per row (Tang et al. 2024)"})

    @staticmethod
    def _generate(texts: pd.Series, ready: _Prepared, workers: list[Any], *, noise: NoiseSource,
                  text_col: TextColumn, column: str, prompts: int) -> list[str | None]:
        """Decode the planned texts on ``workers``; each text's subsample is drawn here, in order."""
        groups, schedule, rng = ready.groups, ready.schedule, ready.rng
        lines = [None if pd.isna(t) else example_line(str(t), column=column, max_length=text_col.max_length)
                 for t in texts.astype(object).tolist()]

        def job(i: int) -> TextJob:
            group = schedule.labels[i]
            return partition_job(lines, groups.members[group], sample_rate=schedule.sample_rates[group],
                                 prompts=prompts, rng=rng, label=groups.prompts_label[group])

        log.info("in-context DP generation: %d texts of up to %d tokens, %d prompts each (noise multiplier %.3g)",
                 schedule.rows, schedule.tokens, prompts, schedule.noise_multiplier)
        with _progress(schedule.rows) as bar:
            out = generate(job, schedule.rows, workers, noise_multiplier=schedule.noise_multiplier, noise=noise,
                           on_text=lambda: bar.update(1))
        return [text if text else (None if text_col.nullable else ".") for text in out]

    def load(self, directory: Path, *, spec: ReleaseSpec) -> FittedInContext:
        """Load a generator saved by :meth:`FittedInContext.save`."""
        return FittedInContext.load(directory, spec=spec)


class FittedInContext:
    """The generated rows (a DP output) and the other columns' histograms. Sampling is post-processing."""

    kind = "incontext"

    def __init__(self, *, spec: ReleaseSpec, pool: dict[str, list[Any]], others: MarginalsModel | None,
                 privacy: dict[str, Any]) -> None:
        self.spec, self.pool, self.others, self.privacy = spec, pool, others, privacy
        sizes = {len(v) for v in pool.values()}
        if len(sizes) != 1:
            raise InternalError("the generated pool's columns differ in length")
        self._rows = sizes.pop()

    @property
    def rows_available(self) -> int:
        """Rows the budget bought: the release publishes at most this many (each once)."""
        return self._rows

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        """``rows`` rows of the pool in a random order (each once while ``rows <= rows_available``)."""
        rng = np.random.default_rng([seed, 0x9001])
        order = (rng.permutation(self._rows)[:rows] if rows <= self._rows
                 else rng.integers(0, self._rows, rows))
        data: dict[str, Any] = {name: [values[i] for i in order] for name, values in self.pool.items()}
        if self.others is not None:
            extra = self.others.sample(rows, seed=seed)
            data.update({name: extra[name].to_numpy() for name in extra.columns})
        frame = pd.DataFrame({name: pd.Series(data[name], dtype=object) for name in self.spec.columns})
        return conform(frame.where(frame.notna(), None), self.spec)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "kind": self.kind, "pool": self.pool, "privacy": self.privacy,
                "others": None if self.others is None else sorted(self.others.spec.columns)}
        (directory / _META).write_text(json.dumps(meta), encoding="utf-8")
        if self.others is not None:
            self.others.save(directory / "others")

    @classmethod
    def load(cls, directory: Path, *, spec: ReleaseSpec) -> FittedInContext:
        """Load a saved pool.

        Raises:
            GeneratorError: ``directory`` holds no in-context generator saved for this spec's columns.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GeneratorError(f"{directory}: not a saved incontext generator ({exc.__class__.__name__})") from exc
        columns = resolve_columns(spec)
        if meta.get("format") != _FORMAT or sorted(meta.get("others") or []) != sorted(columns.others):
            raise GeneratorError(f"{directory}: the saved generator was made for a different spec; refit it")
        others = None
        if columns.others:
            others = MarginalsModel.load(directory / "others", spec=_others_spec(spec, columns.others))
        return cls(spec=spec, pool=meta["pool"], others=others, privacy=meta.get("privacy", {}))
