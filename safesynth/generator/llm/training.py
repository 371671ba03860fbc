"""DP-SGD for the row language model: Poisson sampling, per-record clipping, calibrated Gaussian noise.

Privacy honesty about the sample rate: ``sample_rate = batch_size / N`` needs the number of private rows.
The real N never reaches the model or the schedule: :func:`release_row_count` spends a small part of the
generator stage on a Laplace count, and the sample rate, the number of steps and everything Opacus sees
derive from that noisy count. The gradient normaliser (Opacus' ``expected_batch_size``) is the spec's
``batch_size``, a public constant. The real N is used only by the Poisson sampler itself (each record is
kept with probability ``sample_rate``), which is the mechanism being accounted.

Opacus is driven through its building blocks (``GradSampleModule[FastGradientClipping]`` and
``DPOptimizer[FastGradientClipping]``) with the noise multiplier passed explicitly: ``make_private`` would
derive the expected batch size from ``len(dataset)``, the private N. No early stopping or model
selection looks at private data: the number of steps is fixed by the schedule.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from dp_accounting import dp_event
from torch.nn import functional as F
from tqdm.auto import tqdm

from safesynth.errors import InternalError
from safesynth.generator.llm.encoding import PAD, Cell, RowCodec
from safesynth.generator.llm.grammar import Grammar
from safesynth.generator.llm.model import LanguageModel, model_device, norms_for_opacus
from safesynth.privacy.accountant import Headroom, StageSpend, calibrate_noise_multiplier, compose_epsilon
from safesynth.privacy.mechanisms import LaplaceMechanism
from safesynth.privacy.noise import NoiseSource

if TYPE_CHECKING:  # opacus is imported lazily (and is untyped: these names are Any to mypy)
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

__all__ = [
    "Batch",
    "DPSGDSchedule",
    "TrainingRNGs",
    "TrainingRows",
    "release_row_count",
    "schedule_dp_sgd",
    "sequence_losses",
    "train_dp_sgd",
    "training_rngs",
]

#: Share of the generator stage's epsilon spent on the noisy row count that sets the sample rate.
COUNT_FRACTION = 0.05
#: Attention scores (rows x length^2 x heads x layers) per physical chunk: bounds memory on long texts.
_SCORE_BUDGET = 64_000_000


def release_row_count(rows: int, *, epsilon: float, noise: NoiseSource) -> tuple[float, StageSpend]:
    """The number of training rows with Laplace noise, and its spend (stage ``generator.count``).

    Privacy:
        ``epsilon``-DP under add/remove one record: a count has L1 sensitivity 1, Laplace scale
        ``1 / epsilon``, noise from ``noise`` (OpenDP's secure sampler in releases).
    """
    mechanism = LaplaceMechanism.calibrate(sensitivity=1.0, epsilon=epsilon)
    noisy = float(mechanism.release(np.array([float(rows)]), noise=noise)[0])
    spend = StageSpend(stage="generator.count", event=mechanism.event(), epsilon=mechanism.epsilon, delta=0.0,
                       mechanism="laplace", secure_noise=bool(noise.secure),
                       detail={"sensitivity": 1.0, "scale": mechanism.scale,
                               "purpose": "sets the DP-SGD sample rate and number of steps"})
    return noisy, spend


@dataclass(frozen=True, slots=True, kw_only=True)
class DPSGDSchedule:
    """What DP-SGD will do; every field is public (spec constants or post-processing of the noisy count)."""

    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    epochs: float

    def event(self, steps: int | None = None) -> dp_event.DpEvent:
        sampled = dp_event.PoissonSampledDpEvent(self.sample_rate, dp_event.GaussianDpEvent(self.noise_multiplier))
        return dp_event.SelfComposedDpEvent(sampled, self.steps if steps is None else steps)


def schedule_dp_sgd(
    *,
    noisy_rows: float,
    batch_size: int,
    epochs: float,
    max_grad_norm: float,
    epsilon: float,
    delta: float,
    accountant: str,
    release: Headroom | None = None,
) -> DPSGDSchedule:
    """Sample rate and steps from the noisy count, and the least noise multiplier meeting (epsilon, delta)
    on its own or, with ``release``, the release's composition.

    Privacy:
        Spends nothing (post-processing of the noisy count). The noise multiplier is the smaller of two,
        each of which keeps the release within its target: the least whose event alone has epsilon <=
        ``epsilon`` at ``delta`` (its share: basic composition over the stages), and the least whose event
        composed with ``release.events`` has epsilon <= ``release.epsilon`` at ``release.delta`` (the
        accountant's composition). Event: a ``steps``-fold Poisson-subsampled Gaussian under ``accountant``
        (add/remove one record, per-record L2 sensitivity ``max_grad_norm``).
    """
    rows = max(1.0, noisy_rows)
    sample_rate = min(1.0, batch_size / rows)
    steps = max(1, math.ceil(epochs / sample_rate))

    def event(m: float) -> dp_event.DpEvent:
        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(m)), steps)

    multiplier = calibrate_noise_multiplier(event, epsilon=epsilon, delta=delta, accountant=accountant)
    if release is not None:
        multiplier = min(multiplier, calibrate_noise_multiplier(
            event, epsilon=release.epsilon, delta=release.delta, accountant=release.accountant,
            alongside=release.events))
    return DPSGDSchedule(sample_rate=sample_rate, steps=steps, noise_multiplier=multiplier,
                         max_grad_norm=max_grad_norm, expected_batch_size=batch_size, epochs=epochs)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRNGs:
    """The randomness of the DP-SGD mechanism itself: which records a step sees, and how.

    The Poisson mask, the column orders records are trained on and the Gaussian noise all shape the
    released model together with the private rows. A public seed would let an adversary replay the
    mask and the orders, so in a release all three are seeded from OS entropy (``secrets``).
    """

    poisson: np.random.Generator
    column_order: np.random.Generator
    noise: torch.Generator
    source: str  # how they were seeded, for the account (never the seeds)


def training_rngs(*, secure: bool, seed: int, device: torch.device | None = None) -> TrainingRNGs:
    """Secret generators for DP-SGD; seeded from ``seed`` only for an insecure test noise source.

    Args:
        secure: The release's noise source is secure (every real release): seed from OS entropy.
        seed: The spec's public seed, used only when ``secure`` is false so tests are reproducible.
        device: Where the gradients live (default CPU): Opacus draws the Gaussian noise on the
            gradients' device with this generator, so the two must agree. The Poisson and column-order
            generators are NumPy's (CPU).
    """
    if secure:
        poisson, order, gaussian = secrets.randbits(128), secrets.randbits(128), secrets.randbits(63)
        source = "os-entropy"
    else:
        poisson, order, gaussian = seed + 0x5EED, seed + 0x0DE7, seed + 0x6A55
        source = "spec-seed (insecure test noise source)"
    return TrainingRNGs(poisson=np.random.default_rng(poisson), column_order=np.random.default_rng(order),
                        noise=torch.Generator(device=device or "cpu").manual_seed(gaussian), source=source)


@dataclass(slots=True, kw_only=True)
class Batch:
    """Teacher-forcing tensors for a list of records."""

    input_ids: torch.Tensor  # [B, T] model ids
    position_ids: torch.Tensor  # [B, T] explicit and contiguous (Opacus needs both)
    targets: torch.Tensor  # [B, T-1] codec ids
    allowed: torch.Tensor  # [B, T-1, V] grammar masks
    scored: torch.Tensor  # [B, T-1] value positions


class TrainingRows:
    """Encoded records and how to turn a list of record indices into a :class:`Batch`."""

    def __init__(self, codec: RowCodec, grammar: Grammar, cells: list[list[Cell]], *, lm: LanguageModel,
                 order: list[int], order_rng: np.random.Generator | None = None) -> None:
        """``order_rng`` set: each record of a batch is trained on its own random column order.

        The orders are part of the DP-SGD mechanism's randomness (which record gets which order depends
        on the Poisson batch), so ``order_rng`` must be secret: :attr:`TrainingRNGs.column_order`.
        """
        self.codec, self.grammar, self.cells, self.lm = codec, grammar, cells, lm
        self.order = np.asarray(order)
        self.random_order = order_rng is not None
        if self.random_order and not codec.names:
            raise ValueError("random column orders need the column-name tokens (a codec with names=True)")
        self._rng = order_rng
        self.identity = lm.identity_vocab
        self.device = model_device(lm.model)  # batches are built on the CPU and moved there
        # Sequence lengths only decide how a Poisson batch is cut into physical chunks (memory); the
        # summed clipped gradient, and so the released model, is the same however it is cut.
        per_column = [np.fromiter(map(len, column), dtype=np.int64, count=len(column)) for column in cells]
        self.lengths = 2 + (len(cells) if codec.names else 0) + np.sum(per_column, axis=0)
        config = lm.model.config
        self.attention_cost = max(1, getattr(config, "num_attention_heads", 1) * getattr(config, "num_hidden_layers", 1))

    def __len__(self) -> int:
        return len(self.cells[0])

    def batch(self, index: np.ndarray) -> Batch:
        orders = np.tile(self.order, (len(index), 1))
        if self._rng is not None:
            orders = self._rng.permuted(orders, axis=1)
        seqs = [self.codec.assemble(self.cells, int(i), o) for i, o in zip(index, orders, strict=True)]
        length = max(len(s) for s in seqs)
        tokens = torch.tensor([s + [PAD] * (length - len(s)) for s in seqs], dtype=torch.long)
        allowed, scored = self.grammar.trace(tokens)
        input_ids = tokens if self.identity else self.lm.model_ids[tokens]
        positions = torch.arange(length).unsqueeze(0).expand(len(seqs), -1).contiguous()
        device = self.device
        return Batch(input_ids=input_ids.to(device), position_ids=positions.to(device),
                     targets=tokens[:, 1:].to(device), allowed=allowed.to(device), scored=scored.to(device))


def sequence_losses(model: torch.nn.Module, batch: Batch, *, rows: TrainingRows) -> torch.Tensor:
    """Per-record loss ``[B]``: masked NLL of the row's values, divided by the (public) column count."""
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[:, :-1]
    if not rows.identity:
        logits = logits.index_select(-1, rows.lm.model_ids.to(logits.device))
    logits = logits.masked_fill(~batch.allowed, float("-inf"))
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), reduction="none")
    nll = torch.where(batch.scored.reshape(-1), nll, torch.zeros_like(nll)).view(batch.targets.shape)
    return nll.sum(1) / len(rows.codec.columns)


def _make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: DPSGDSchedule, *,
                  mode: str, noise_generator: torch.Generator) -> tuple[GradSampleModule, DPOptimizer]:
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    common = {"noise_multiplier": schedule.noise_multiplier, "max_grad_norm": schedule.max_grad_norm,
              "expected_batch_size": schedule.expected_batch_size, "loss_reduction": "mean",
              "generator": noise_generator}
    if mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                   max_grad_norm=schedule.max_grad_norm, use_ghost_clipping=True)
        return gsm, DPOptimizerFastGradientClipping(optimizer, **common)
    if mode == "hooks":
        return GradSampleModule(model, batch_first=True, loss_reduction="mean"), DPOptimizer(optimizer, **common)
    raise ValueError(f"`grad_sample_mode` ({mode!r}) must be 'ghost' or 'hooks'")


def _noise_only(gsm: GradSampleModule, optimizer: DPOptimizer, mode: str) -> None:
    """An empty Poisson batch still takes a step: the sum of no gradients (zero) plus noise."""
    for p in optimizer.params:
        if mode == "ghost":
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()
    optimizer.zero_grad()


def dp_step(gsm: GradSampleModule, optimizer: DPOptimizer, rows: TrainingRows, index: np.ndarray, *, mode: str,
            physical_batch_size: int) -> float:
    """One DP-SGD step on a Poisson batch, in physical chunks; returns the batch's summed loss.

    The returned loss is unnoised, a statistic of the private rows: for tests only, never to be shown.
    """
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    if len(index) == 0:
        _noise_only(gsm, optimizer, mode)
        return 0.0
    chunks = _chunks(rows, index, physical_batch_size)
    total = 0.0
    for i, chunk in enumerate(chunks):
        losses = sequence_losses(gsm, rows.batch(chunk), rows=rows)
        with warnings.catch_warnings():
            # Opacus' backward hooks sit on modules whose inputs (token ids) need no gradient; torch
            # warns about that on every call, and it is expected here.
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            if mode == "ghost":
                DPTensorFastGradientClipping(gsm, optimizer, losses, "mean").backward()
            else:
                losses.mean().backward()
        optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
        optimizer.step()
        optimizer.zero_grad()
        total += float(losses.detach().sum())
    return total


def _chunks(rows: TrainingRows, index: np.ndarray, physical_batch_size: int) -> list[np.ndarray]:
    """Cut a Poisson batch into chunks of similar lengths, each within the rows and attention budgets."""
    index = index[np.argsort(rows.lengths[index], kind="stable")]
    chunks, start = [], 0
    while start < len(index):
        longest = int(rows.lengths[index[min(len(index), start + physical_batch_size) - 1]])
        fit = _SCORE_BUDGET // (longest * longest * rows.attention_cost)
        stop = start + max(1, min(physical_batch_size, fit))
        chunks.append(index[start:stop])
        start = stop
    return chunks


def _progress_fields(schedule: DPSGDSchedule, steps_done: int, epsilon_spent: float) -> dict[str, str]:
    """What the progress bar shows: public figures of the schedule only (no loss, no batch size)."""
    return {"epoch": f"{steps_done * schedule.sample_rate:.2f}", "eps": f"{epsilon_spent:.3f}"}


def _lr_lambda(steps: int) -> Callable[[int], float]:
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:  # linear warm-up, cosine decay to 10% (data-independent)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))

    return factor


def pretrain(lm: LanguageModel, rows: TrainingRows, *, epochs: float, batch_size: int, learning_rate: float,
             rng: np.random.Generator) -> int:
    """Train ``lm.model`` in place without noise on ``rows`` that are *not* private (a DP output); the steps.

    Adam with the DP-SGD schedule's warm-up and cosine decay, batches drawn without replacement from
    ``rng`` (public: it touches only the public rows).

    Privacy:
        Spends nothing when ``rows`` are a DP output or public data: training on them is post-processing.
        Never call it on private records.
    """
    model = lm.model
    steps = max(1, math.ceil(epochs * len(rows) / batch_size))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps))
    for _ in range(steps):
        index = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)
        loss = sequence_losses(model, rows.batch(index), rows=rows).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    return steps


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingStats:
    """Public facts about a run (no losses: they are functions of the private data)."""

    steps: int
    seconds: float
    grad_sample_mode: str


def train_dp_sgd(
    lm: LanguageModel,
    rows: TrainingRows,
    schedule: DPSGDSchedule,
    *,
    learning_rate: float,
    mode: str,
    physical_batch_size: int,
    poisson_rng: np.random.Generator,
    noise_generator: torch.Generator,
    accountant: str = "rdp",
    delta: float,
    progress: bool | None = None,
) -> TrainingStats:
    """Train ``lm.model`` in place with DP-SGD following ``schedule``.

    Privacy:
        Spends exactly ``schedule.event()`` (add/remove one record; each record's sequence gradient is
        clipped to ``max_grad_norm``; Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added
        to the sum of clipped gradients at every step, empty Poisson batches included). The caller
        records the spend. The noise comes from ``noise_generator`` (torch, not a CSPRNG).
        The progress bar (off when stderr is not a TTY, unless ``progress=True`` or
        ``SAFESYNTH_PROGRESS=1``) shows only public figures: steps, epochs and the epsilon spent so far,
        all functions of the schedule. No loss or batch size (statistics of the private rows) is shown,
        logged, stored or returned.
    """
    model = lm.model
    if noise_generator.device != model_device(model):
        raise InternalError(f"the DP noise generator ({noise_generator.device}) must be on the model's device "
                            f"({model_device(model)}): Opacus draws the noise where the gradients are")
    start = time.perf_counter()
    model.train()
    with norms_for_opacus(model):
        params = [p for p in model.parameters() if p.requires_grad]
        base = torch.optim.Adam(params, lr=learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(base, _lr_lambda(schedule.steps))
        gsm, optimizer = _make_private(model, base, schedule, mode=mode, noise_generator=noise_generator)
        if progress is None and os.environ.get("SAFESYNTH_PROGRESS") in ("0", "1"):
            progress = os.environ["SAFESYNTH_PROGRESS"] == "1"
        bar = tqdm(total=schedule.steps, desc="DP-SGD", unit="step", file=sys.stderr, mininterval=5.0,
                   disable=None if progress is None else not progress)
        every = max(1, schedule.steps // 25)
        try:
            for step in range(schedule.steps):
                index = np.flatnonzero(poisson_rng.random(len(rows)) < schedule.sample_rate)
                # The unnoised loss is a statistic of the private rows: it is discarded, never shown.
                dp_step(gsm, optimizer, rows, index, mode=mode, physical_batch_size=physical_batch_size)
                scheduler.step()
                bar.update(1)
                if not bar.disable and (step % every == 0 or step == schedule.steps - 1):
                    spent = compose_epsilon([schedule.event(step + 1)], delta=delta, accountant=accountant)
                    bar.set_postfix(_progress_fields(schedule, step + 1, spent))
        finally:
            bar.close()
            gsm.cleanup()
    model.eval()
    return TrainingStats(steps=schedule.steps, seconds=time.perf_counter() - start, grad_sample_mode=mode)
