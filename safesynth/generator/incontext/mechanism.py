"""The DP in-context mechanism without a model: one token step, the subsample, and the accounting.

Tang et al., ICLR 2024 ("Privacy-Preserving In-Context Learning with Differentially Private Few-Shot
Generation", arXiv 2309.11765), in its once-per-row variant:

1. For one generated text, every private record (of the text's label group) joins the subsample
   independently with probability ``sample_rate`` and goes to one of ``prompts`` prompts by its own
   uniform draw (:func:`poisson_partition`). Adding or removing one record changes one prompt only.
2. Per token, each prompt's next-token distribution is restricted to a *public* candidate set (the top-k
   tokens of a prompt without private examples) and renormalised; the sum over prompts
   (:func:`aggregate`) has L2 sensitivity ``sqrt(2)``: one prompt's probability vector changes, and two
   probability vectors differ by at most ``sqrt(2)`` in L2. An empty prompt is the public prompt, still a
   probability vector.
3. :func:`noisy_argmax` adds ``N(0, (noise_multiplier * sqrt(2))^2)`` to each candidate's sum (from the
   injected :class:`~safesynth.privacy.noise.NoiseSource`) and keeps the argmax.

Tang et al. draw a fresh subsample per token, which costs a prefill of every prompt per token. Here the
subsample is drawn once per text and the prompts' KV caches are reused: ``T`` adaptive Gaussian steps with
multiplier ``sigma`` on the same subsample compose exactly to one Gaussian with multiplier
``sigma / sqrt(T)`` (Gaussian DP composes by ``mu = sqrt(sum mu_i^2)``), so one text is
``PoissonSampledDpEvent(q, GaussianDpEvent(sigma / sqrt(T)))`` with ``T = max_new_tokens`` charged whether or
not the text stops early, and ``R`` texts are that event self-composed ``R`` times.

Privacy:
    Add/remove one record. Per text: a Poisson-subsampled Gaussian (rate ``sample_rate``, multiplier
    ``noise_multiplier / sqrt(tokens)``). With a conditioning column, texts of label ``l`` read only the
    records of label ``l`` (a record's own attribute), so by parallel composition a record pays only for the
    texts of its label: :func:`generation_event` charges the largest count of texts of any one label at the
    largest sample rate of any label, which dominates every label's own event.

Imports no torch: the accounting is fast to import and to test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event

from safesynth.privacy.accountant import calibrate_noise_multiplier, compose_epsilon
from safesynth.privacy.noise import NoiseSource

__all__ = [
    "MAX_SAMPLE_RATE",
    "SENSITIVITY",
    "GenerationPlan",
    "aggregate",
    "generation_event",
    "noisy_argmax",
    "plan_generation",
    "poisson_partition",
    "restrict",
    "row_event",
    "rows_within_budget",
    "sample_rate_for",
]

#: L2 sensitivity of the summed distributions under add/remove one record (one prompt's vector changes).
SENSITIVITY = math.sqrt(2.0)
#: Largest Poisson sample rate: above it subsampling amplifies privacy little and prompts hold fewer than
#: ``shots`` examples anyway (a small table); the rate never reaches 1.
MAX_SAMPLE_RATE = 0.5


def sample_rate_for(noisy_rows: float, *, prompts: int, shots: int) -> float:
    """``prompts * shots / noisy_rows``, at most :data:`MAX_SAMPLE_RATE`.

    Privacy:
        Spends nothing: post-processing of a DP count (and of spec constants).
    """
    return min(MAX_SAMPLE_RATE, prompts * shots / max(1.0, float(noisy_rows)))


def row_event(*, sample_rate: float, noise_multiplier: float, tokens: int) -> dp_event.DpEvent:
    """One generated text: ``tokens`` Gaussian steps on one Poisson subsample."""
    if tokens < 1:
        raise ValueError(f"`tokens` ({tokens}) must be >= 1")
    return dp_event.PoissonSampledDpEvent(
        sample_rate, dp_event.GaussianDpEvent(noise_multiplier / math.sqrt(tokens)))


def generation_event(*, sample_rate: float, noise_multiplier: float, tokens: int, rows: int) -> dp_event.DpEvent:
    """``rows`` texts, each :func:`row_event` (``rows`` of one label when conditioned: see the module)."""
    if rows <= 0:
        return dp_event.NoOpDpEvent()
    return dp_event.SelfComposedDpEvent(
        row_event(sample_rate=sample_rate, noise_multiplier=noise_multiplier, tokens=tokens), rows)


def rows_within_budget(event_of: Callable[[int], dp_event.DpEvent], *, max_rows: int, epsilon: float,
                       delta: float, accountant: str) -> int:
    """The largest ``R <= max_rows`` whose ``event_of(R)`` has epsilon <= ``epsilon`` at ``delta`` (0 if none).

    ``event_of`` must be monotone (more rows never cost less); bisection keeps the safe end.
    """
    def fits(rows: int) -> bool:
        return rows == 0 or compose_epsilon([event_of(rows)], delta=delta, accountant=accountant) <= epsilon

    if fits(max_rows):
        return max_rows
    lo, hi = 0, max_rows  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationPlan:
    """What the generation will do; every field is public (spec constants, DP outputs, their functions).

    Attributes:
        labels: the label group of each text to generate, in order (``rows`` of them).
        sample_rates: the Poisson sample rate of each label group.
        noise_multiplier: per-token Gaussian std over :data:`SENSITIVITY`.
        tokens: tokens charged per text.
        rows: texts bought (at most the ``max_rows`` asked for).
    """

    labels: tuple[int, ...]
    sample_rates: tuple[float, ...]
    noise_multiplier: float
    tokens: int
    rows: int

    @property
    def sample_rate(self) -> float:
        """The largest sample rate of a label that is generated (what the event charges)."""
        return max((self.sample_rates[g] for g in set(self.labels)), default=0.0)

    @property
    def rows_per_label(self) -> int:
        """The largest number of texts of one label (what the event charges)."""
        return int(np.bincount(np.asarray(self.labels, dtype=np.int64)).max()) if self.labels else 0

    def event(self) -> dp_event.DpEvent:
        return generation_event(sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier,
                                tokens=self.tokens, rows=self.rows_per_label)


def _prefix_event(labels: np.ndarray, rates: np.ndarray, rows: int, *, noise_multiplier: float,
                  tokens: int) -> dp_event.DpEvent:
    head = labels[:rows]
    if rows == 0:
        return dp_event.NoOpDpEvent()
    return generation_event(sample_rate=float(rates[np.unique(head)].max()), noise_multiplier=noise_multiplier,
                            tokens=tokens, rows=int(np.bincount(head).max()))


def plan_generation(*, labels: Sequence[int], sample_rates: Sequence[float], tokens: int,
                    noise_multiplier: float | None, epsilon: float, delta: float,
                    accountant: str) -> GenerationPlan:
    """How many texts the budget buys, and at which per-token noise.

    Args:
        labels: the label group of each text wanted (``sampling.rows`` of them; all 0 without conditioning),
            drawn from public randomness and DP outputs only.
        sample_rates: Poisson sample rate per label group (:func:`sample_rate_for` of its noisy count).
        tokens: tokens charged per text (``max_new_tokens``).
        noise_multiplier: per-token multiplier; ``None``: the least that buys every text wanted.
        epsilon, delta: the budget of the generation (the generator stage less the count's share).

    Privacy:
        Spends nothing. The returned plan's event has epsilon <= ``epsilon`` at ``delta`` under
        ``accountant``; ``rows`` is the largest prefix of ``labels`` within the budget.
    """
    wanted, rates = np.asarray(labels, dtype=np.int64), np.asarray(sample_rates, dtype=np.float64)
    if noise_multiplier is None:
        full = len(wanted)
        noise_multiplier = calibrate_noise_multiplier(
            lambda m: _prefix_event(wanted, rates, full, noise_multiplier=m, tokens=tokens),
            epsilon=epsilon, delta=delta, accountant=accountant)
    sigma = float(noise_multiplier)
    rows = rows_within_budget(lambda r: _prefix_event(wanted, rates, r, noise_multiplier=sigma, tokens=tokens),
                              max_rows=len(wanted), epsilon=epsilon, delta=delta, accountant=accountant)
    return GenerationPlan(labels=tuple(int(x) for x in wanted[:rows]), sample_rates=tuple(float(r) for r in rates),
                          noise_multiplier=sigma, tokens=tokens, rows=rows)


def poisson_partition(records: int, *, sample_rate: float, prompts: int,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Each record joins with probability ``sample_rate``, in a prompt drawn uniformly: indices per prompt.

    One uniform ``u`` per record decides both: the record joins when ``u < sample_rate``, and then
    ``u / sample_rate`` is uniform on [0, 1) and independent of joining, so ``floor(prompts * u /
    sample_rate)`` is a uniform prompt. Every record's draw is its own, so adding or removing a record
    changes at most the one prompt it goes to (and appending one leaves the others' draws as they were).
    ``rng`` is the mechanism's secret randomness (OS entropy in a release), never the spec's seed.
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"`sample_rate` ({sample_rate}) must be in (0, 1]")
    u = rng.random(records)
    included = u < sample_rate
    assigned = np.minimum((u / sample_rate * prompts).astype(np.int64), prompts - 1)
    return [np.flatnonzero(included & (assigned == i)) for i in range(prompts)]


def restrict(logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """Each prompt's next-token distribution restricted to the candidates and renormalised: ``[M, K]``.

    ``logits`` are the prompts' logits at the candidate tokens ``[M, K]``: the softmax over the candidates
    at ``temperature`` equals the full softmax restricted to them and renormalised. Float64, so every row
    is a probability vector up to rounding.
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    weights = np.exp(scaled)
    out: np.ndarray = weights / weights.sum(axis=1, keepdims=True)
    return out


def aggregate(distributions: np.ndarray) -> np.ndarray:
    """The sum over prompts of their restricted distributions ``[M, K] -> [K]`` (L2 sensitivity sqrt(2))."""
    summed: np.ndarray = np.asarray(distributions, dtype=np.float64).sum(axis=0)
    return summed


def noisy_argmax(summed: np.ndarray, *, noise_multiplier: float, noise: NoiseSource) -> int:
    """The candidate with the largest noisy sum.

    Privacy:
        One Gaussian mechanism on ``summed`` (L2 sensitivity :data:`SENSITIVITY` under add/remove one
        record), std ``noise_multiplier * sqrt(2)`` from ``noise``; the argmax is post-processing. The caller
        accounts the steps (:func:`row_event`).
    """
    noisy = noise.gaussian(np.asarray(summed, dtype=np.float64), scale=noise_multiplier * SENSITIVITY)
    return int(np.argmax(noisy))
