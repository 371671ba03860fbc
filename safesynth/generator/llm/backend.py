"""`generator: {kind: llm}`: a causal LM trained with DP-SGD on rows serialised from the public spec.

Stages spent (all recorded in the release account):

* ``condition`` (only with ``condition_on``): a noisy histogram of that column over its declared domain;
  sampled rows draw the column from it and the model completes the row.
* ``generator.count``: a Laplace row count (``COUNT_FRACTION`` of the generator stage's epsilon) that
  sets the DP-SGD sample rate and number of steps, so the true row count never reaches the model.
* ``generator.dp_sgd``: DP-SGD calibrated by our accountant to the rest of the generator stage.

Randomness: model initialisation and sampling come from the spec's seed; the DP-SGD mechanism's own
randomness (the Poisson sampling mask, the training column orders with ``random_column_order`` and the
Gaussian noise) comes from generators seeded from OS entropy (or, only when the injected noise source is a
test source with ``secure = False``, from the spec's seed so tests are reproducible).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from safesynth.errors import GeneratorError, SpecError
from safesynth.generator.calibrate import Calibration
from safesynth.generator.llm.card import SECURE_NOISE_NOTE, model_card
from safesynth.generator.llm.device import resolve_device
from safesynth.generator.llm.encoding import BOS, EOS, NULL, CategoryCodec, RowCodec
from safesynth.generator.llm.grammar import Grammar
from safesynth.generator.llm.model import (
    LanguageModel,
    TokenizerText,
    build_language_model,
    extend_language_model,
    merged,
    model_device,
    torch_threads,
)
from safesynth.generator.llm.pretrained import load_pretrained, resolve_model
from safesynth.generator.llm.sampling import sample_tokens
from safesynth.generator.llm.training import (
    COUNT_FRACTION,
    DPSGDSchedule,
    TrainingRows,
    release_row_count,
    schedule_dp_sgd,
    train_dp_sgd,
    training_rngs,
)
from safesynth.generator.llm.warm import warm_budget, warm_start
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, compose_epsilon, headroom
from safesynth.privacy.mechanisms import LaplaceMechanism, make_mechanism
from safesynth.privacy.noise import NoiseSource
from safesynth.privacy.planner import BudgetPlan
from safesynth.repair import repair_records
from safesynth.spec import LLMGeneratorSpec, ReleaseSpec

__all__ = ["ConditionHistogram", "FittedLLM", "LLMBackend", "release_condition_histogram"]

log = logging.getLogger("safesynth")

_META = "safesynth_llm.json"
_FORMAT = 1


def _gen(spec: ReleaseSpec) -> LLMGeneratorSpec:
    if not isinstance(spec.generator, LLMGeneratorSpec):
        raise SpecError(f"`generator.kind` ({spec.generator.kind!r}) must be 'llm' for the LLM backend")
    return spec.generator


@dataclass(frozen=True, slots=True, kw_only=True)
class ConditionHistogram:
    """The released (noisy, clipped, normalised) distribution of the conditioning column."""

    column: str
    tokens: tuple[int, ...]  # one value token per bucket: declared categories, then <null> if nullable
    probabilities: tuple[float, ...]

    def draw(self, rows: int, *, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 0xC0D])
        return np.asarray(self.tokens)[rng.choice(len(self.tokens), size=rows, p=np.asarray(self.probabilities))]


def _condition_codec(spec: ReleaseSpec, codec: RowCodec) -> CategoryCodec | None:
    name = _gen(spec).condition_on
    if name is None:
        return None
    column = codec.columns[codec.index(name)]
    if not isinstance(column, CategoryCodec):
        raise SpecError(f"`generator.condition_on` ({name}) must name a categorical or boolean column")
    return column


def release_condition_histogram(
    train: pd.DataFrame, codec: CategoryCodec, *, spec: ReleaseSpec, plan: BudgetPlan, noise: NoiseSource
) -> tuple[ConditionHistogram, StageSpend]:
    """Noisy counts of ``codec``'s column over its declared domain (and null), as probabilities.

    Privacy:
        Spends ``plan.stage("condition")`` with ``spec.privacy.mechanism`` (Laplace: pure epsilon;
        Gaussian: (epsilon, delta) by the accountant). A histogram under add/remove one record has L1
        and L2 sensitivity 1. Clipping negatives and normalising is post-processing.
    """
    stage = plan.stage("condition")
    series = train[codec.name]
    keys: list[Any] = [False, True] if codec.boolean else list(codec.labels)
    counts = series.value_counts(dropna=True).reindex(keys, fill_value=0).to_numpy(dtype=np.float64)
    tokens = list(codec.tokens)
    if codec.nullable:
        counts = np.append(counts, float(series.isna().sum()))
        tokens.append(NULL)
    mechanism = make_mechanism(spec.privacy.mechanism, l1_sensitivity=1.0, l2_sensitivity=1.0,
                               epsilon=stage.epsilon, delta=stage.delta, accountant=plan.accountant)
    noisy = np.clip(mechanism.release(counts, noise=noise), 0.0, None)
    probabilities = noisy / noisy.sum() if noisy.sum() > 0 else np.full(len(noisy), 1.0 / len(noisy))
    if isinstance(mechanism, LaplaceMechanism):
        epsilon, delta = mechanism.epsilon, 0.0
    else:
        epsilon = compose_epsilon([mechanism.event()], delta=stage.delta, accountant=plan.accountant)
        delta = stage.delta
    spend = StageSpend(stage="condition", event=mechanism.event(), epsilon=epsilon, delta=delta,
                       mechanism=spec.privacy.mechanism, secure_noise=bool(noise.secure),
                       detail={"column": codec.name, "buckets": len(tokens), "sensitivity": 1.0,
                               "scale": mechanism.scale})
    hist = ConditionHistogram(column=codec.name, tokens=tuple(tokens),
                              probabilities=tuple(float(p) for p in probabilities))
    return hist, spend


def _sgd_spend(schedule: DPSGDSchedule, *, delta: float, accountant: str, detail: dict[str, Any]) -> StageSpend:
    epsilon = compose_epsilon([schedule.event()], delta=delta, accountant=accountant)
    return StageSpend(stage="generator.dp_sgd", event=schedule.event(), epsilon=epsilon, delta=delta,
                      mechanism="dp-sgd (poisson-subsampled gaussian)", secure_noise=False,
                      detail={"noise_multiplier": schedule.noise_multiplier, "sample_rate": schedule.sample_rate,
                              "steps": schedule.steps, "epochs": schedule.epochs,
                              "max_grad_norm": schedule.max_grad_norm,
                              "expected_batch_size": schedule.expected_batch_size, "accountant": accountant,
                              "insecure_noise_reason": SECURE_NOISE_NOTE, **detail})


class LLMBackend:
    """Fits and loads :class:`FittedLLM` (the ``llm`` generator)."""

    kind = "llm"

    def fit(self, train: pd.DataFrame, *, spec: ReleaseSpec, plan: BudgetPlan, account: ReleaseAccount,
            noise: NoiseSource, workdir: Path) -> FittedLLM:
        """Fit with DP; records ``condition`` (if any), ``generator.count``, ``generator.warm_start`` (with
        ``warm_start: mst``) and ``generator.dp_sgd``.

        Records outside the spec's domains (declared or discovered) are first repaired on their own
        (:func:`safesynth.repair.repair_records`), so no single record can make the fit fail.

        Privacy:
            Spends ``plan.stage("generator")`` (count: ``COUNT_FRACTION`` of its epsilon; warm start:
            ``warm_start_share`` of its epsilon and delta, see :mod:`.warm`; DP-SGD: the rest) plus
            ``plan.stage("condition")`` with ``condition_on``. DP-SGD's noise is the smaller of what its share
            needs alone and what the release's composition under the plan's accountant leaves it (every
            stage spent so far, the later stages at their planned worst case: :func:`headroom`), so the
            release's epsilon stays within the spec's by basic composition or by the accountant.
            Add/remove one record throughout.
        """
        gen = _gen(spec)
        # Everything that can fail without spending (model, encoding) comes before the first release.
        pretrained = None
        if gen.model is not None:  # its own tokenizer writes the text cells, so it comes before the codec
            source = resolve_model(gen.model, base_dir=spec.base_dir)  # preflight already ran it: cheap
            pretrained = load_pretrained(source, dtype=torch.float32)
        # A fixed column order makes column-name tokens redundant: leave them out (~40 % fewer tokens).
        codec = RowCodec.from_spec(spec, context_length=gen.context_length, names=gen.random_column_order,
                                   text=None if pretrained is None else TokenizerText(pretrained[1]))
        condition_codec = _condition_codec(spec, codec)
        stage = plan.stage("generator")
        if not stage.delta > 0:
            raise SpecError("`privacy.delta` (0) must be > 0 for DP-SGD (the llm generator)")
        first = [] if condition_codec is None else [codec.index(condition_codec.name)]
        order = first + [i for i in range(len(codec.columns)) if i not in first]
        grammar = Grammar(codec, order=order)
        if pretrained is None:
            lm = build_language_model(gen, codec.symbols, seed=spec.sampling.seed)
        else:
            lm = extend_language_model(*pretrained, codec.symbols, seed=spec.sampling.seed, lora=gen.lora)
        device = resolve_device(gen.device)
        torch.nn.Module.to(lm.model, device)  # PreTrainedModel.to is typed as a wrapper mypy cannot call
        train = repair_records(train, spec).frame  # records outside the domains: clamped, nulled or dropped
        rngs = training_rngs(secure=bool(noise.secure), seed=spec.sampling.seed, device=device)
        rows = TrainingRows(codec, grammar, codec.encode_cells(train), lm=lm, order=order,
                            order_rng=rngs.column_order if gen.random_column_order else None)
        condition = None
        if condition_codec is not None:
            condition, spend = release_condition_histogram(train, condition_codec, spec=spec, plan=plan, noise=noise)
            account.add(spend)
        noisy_rows, count_spend = release_row_count(len(train), epsilon=COUNT_FRACTION * stage.epsilon, noise=noise)
        account.add(count_spend)
        warm_epsilon, warm_delta = warm_budget(stage, gen, spec.audit.target_column)
        calibration = None
        if gen.warm_start == "mst":  # spends the warm start's share; the pretraining is post-processing
            marginal_model = warm_start(lm, train, spec=spec, stage=stage, codec=codec, grammar=grammar, order=order,
                                        noisy_rows=noisy_rows, account=account, noise=noise, workdir=workdir)
            if gen.calibrate:  # the MST model's marginals, post-processing
                calibration = Calibration(bins=marginal_model.bins, targets=tuple(marginal_model.targets()),
                                          oversample=gen.calibrate_oversample)
        sgd_delta = stage.delta - warm_delta
        # What the stages before left unspent under the accountant's composition goes to DP-SGD too.
        schedule = schedule_dp_sgd(noisy_rows=noisy_rows, batch_size=gen.batch_size, epochs=gen.epochs,
                                   max_grad_norm=gen.max_grad_norm,
                                   epsilon=(1 - COUNT_FRACTION) * stage.epsilon - warm_epsilon,
                                   delta=sgd_delta, accountant=plan.accountant,
                                   release=headroom(account, plan, current="generator"))
        sgd_spend = _sgd_spend(schedule, delta=sgd_delta, accountant=plan.accountant,
                               detail={"grad_sample_mode": gen.grad_sample_mode, "rng_seeding": rngs.source})
        account.add(sgd_spend)  # committed before the first noisy step
        log.info("DP-SGD: %d steps, sampling rate %.3g, noise multiplier %.3g", schedule.steps, schedule.sample_rate,
                 schedule.noise_multiplier)
        with torch_threads():
            train_dp_sgd(lm, rows, schedule, learning_rate=gen.learning_rate, mode=gen.grad_sample_mode,
                         physical_batch_size=gen.physical_batch_size, poisson_rng=rngs.poisson,
                         noise_generator=rngs.noise, accountant=plan.accountant, delta=sgd_delta)
        lm.model = merged(lm.model)
        log.info("DP-SGD: done")
        spends = [s for s in account.spends
                  if s.stage in ("condition", "generator.count", "generator.warm_start", "generator.dp_sgd")]
        privacy = {"stages": [{k: v for k, v in s.to_dict().items() if k != "detail"} for s in spends],
                   "dp_sgd": {k: v for k, v in sgd_spend.detail.items() if k != "insecure_noise_reason"}}
        return FittedLLM(spec=spec, codec=codec, grammar=grammar, lm=lm, order=tuple(order), condition=condition,
                         privacy=privacy, calibration=calibration)

    def load(self, directory: Path, *, spec: ReleaseSpec, device: torch.device | None = None) -> FittedLLM:
        """Load a generator saved by :meth:`FittedLLM.save` (offline), on ``device`` (default: ``generator.device``)."""
        return FittedLLM.load(directory, spec=spec, device=device)


class FittedLLM:
    """A trained row model. Sampling is post-processing: it reads no private data."""

    kind = "llm"

    def __init__(self, *, spec: ReleaseSpec, codec: RowCodec, grammar: Grammar, lm: LanguageModel,
                 order: tuple[int, ...], condition: ConditionHistogram | None, privacy: dict[str, Any],
                 calibration: Calibration | None = None) -> None:
        self.spec, self.codec, self.grammar, self.lm = spec, codec, grammar, lm
        self.order, self.condition, self.privacy = order, condition, privacy
        self.calibration = calibration
        names = [codec.name_tokens[i] for i in order]
        self._order_tokens = torch.tensor([*names, EOS], dtype=torch.long)

    @property
    def batch_size(self) -> int:
        """Rows per generation call (``sampling.batch_size``); part of what makes a shard reproducible."""
        return self.spec.sampling.batch_size

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        """``rows`` rows with the spec's columns and dtypes; identical for the same ``(rows, seed)``.

        Rows are generated in batches of ``sampling.batch_size`` (batch ``b`` uses a torch generator on
        the model's device seeded from ``(seed, b)``); a different batch size or device type (CPU or CUDA
        random streams) gives different, equally valid rows. With a calibration (``calibrate: true``),
        ``calibrate_oversample`` times as many rows are generated and a raking-weighted subset is kept
        (:mod:`safesynth.generator.calibrate`).
        """
        if self.calibration is None or rows == 0:
            return self._generate(rows, seed=seed)
        candidates = self._generate(rows * self.calibration.oversample, seed=seed)
        return self.calibration.select(candidates, rows, spec=self.spec, seed=seed)

    def _generate(self, rows: int, *, seed: int) -> pd.DataFrame:
        gen = _gen(self.spec)
        conditioned = None if self.condition is None else self.condition.draw(rows, seed=seed)
        sequences: list[list[int]] = []
        device = model_device(self.lm.model)
        with torch_threads():
            for b, start in enumerate(range(0, rows, self.batch_size)):
                n = min(self.batch_size, rows - start)
                prompts = torch.full((n, 1), BOS, dtype=torch.long)
                if conditioned is not None:
                    values = torch.as_tensor(conditioned[start:start + n], dtype=torch.long)[:, None]
                    if self.codec.names:
                        values = torch.cat([torch.full((n, 1), self.codec.name_tokens[self.order[0]]), values], 1)
                    prompts = torch.cat([prompts, values], dim=1)
                state = int(np.random.SeedSequence([seed, b]).generate_state(1, np.uint64)[0])
                tokens = sample_tokens(self.lm, self.grammar, prompts=prompts, order=self._order_tokens,
                                       temperature=gen.temperature,
                                       generator=torch.Generator(device=device).manual_seed(state))
                sequences.extend(tokens.tolist())
        return self.codec.decode(sequences, self.spec, order=self.order)

    def save(self, directory: Path) -> None:
        """Weights (safetensors), tokenizer, codec check data and a model card with the privacy parameters."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lm.model.save_pretrained(directory)
        self.lm.tokenizer.save_pretrained(directory)
        meta = {"format": _FORMAT, "kind": self.kind, "symbols": list(self.codec.symbols), "names": self.codec.names,
                "text": "bpe" if self.codec.text is not None else "bytes" if self.codec.has_text else "none",
                "model_ids": self.lm.model_ids.tolist(), "order": list(self.order), "privacy": self.privacy,
                "condition": None if self.condition is None else {
                    "column": self.condition.column, "tokens": list(self.condition.tokens),
                    "probabilities": list(self.condition.probabilities)}}
        (directory / _META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if self.calibration is not None:
            self.calibration.save(directory)
        config = self.lm.model.config
        architecture = {"model_type": config.model_type, "layers": config.num_hidden_layers,
                        "hidden_size": config.hidden_size, "heads": config.num_attention_heads,
                        "vocab_size": config.vocab_size,
                        "parameters": sum(p.numel() for p in self.lm.model.parameters())}
        card = model_card(architecture=architecture, privacy=self.privacy, dataset=self.spec.dataset)
        (directory / "README.md").write_text(card, encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, *, spec: ReleaseSpec, device: torch.device | None = None) -> FittedLLM:
        """Load a saved generator onto ``device`` (default: ``generator.device`` resolved on this machine,
        so a Dask worker with a GPU samples on its own GPU under ``auto``).

        Raises:
            GeneratorError: ``directory`` holds no generator saved for this spec's columns and domains.
            SpecError: ``generator.device`` is ``cuda`` and this machine has none.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GeneratorError(f"{directory}: not a saved llm generator ({exc.__class__.__name__})") from exc
        gen = _gen(spec)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        text = TokenizerText(tokenizer) if gen.model is not None else None
        codec = RowCodec.from_spec(spec, context_length=gen.context_length, names=bool(meta.get("names", True)),
                                   text=text)
        if meta.get("format") != _FORMAT or tuple(meta["symbols"]) != codec.symbols:
            raise GeneratorError(f"{directory}: the saved generator was trained for a different spec (columns or "
                                 "domains changed); refit it")
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32).eval()
        model.to(resolve_device(gen.device) if device is None else device)
        lm = LanguageModel(model=model, tokenizer=tokenizer, model_ids=torch.tensor(meta["model_ids"]))
        cond = meta.get("condition")
        condition = None if cond is None else ConditionHistogram(
            column=cond["column"], tokens=tuple(cond["tokens"]), probabilities=tuple(cond["probabilities"]))
        return cls(spec=spec, codec=codec, grammar=Grammar(codec, order=meta["order"]), lm=lm, order=tuple(meta["order"]),
                   condition=condition, privacy=meta.get("privacy", {}), calibration=Calibration.load(directory))
