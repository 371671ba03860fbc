"""Canary auditing: an empirical lower bound on epsilon from one release (one-run auditing).

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023
(arXiv:2305.08846). The auditor draws ``m`` *canary* records, includes each in the rows the
generator is fitted on with probability 1/2, independently and in secret, and after the release scores
every canary from the synthetic rows. It guesses "included" for the ``r_+`` highest scores and
"excluded" for the ``r_-`` lowest and abstains on the rest. Differential privacy bounds how many of the
``r = r_+ + r_-`` guesses can be right: for an ``(epsilon, delta)``-DP mechanism, the number ``W`` of
correct guesses satisfies, for every ``v``,

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m delta max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i,
    q = e^epsilon / (1 + e^epsilon)

(the (epsilon, delta) form of the paper's main theorem, as its Appendix D code ``p_value_DP_audit``
computes it; for ``delta = 0`` only the binomial tail remains, and it is exact).
:func:`one_run_p_value` is that right-hand side; :func:`epsilon_lower_bound` is the largest epsilon the
observed count rejects at level ``beta`` (Appendix D's ``get_eps_audit``, by bisection). What follows
the paper: the inclusion coins, the guess rule, the p-value and its inversion. What is ours: canaries
drawn from the spec's declared domains, scores from the registered membership attacks, a fixed public
grid of abstention levels with a Bonferroni correction, and the typed result.

Why any crossing the bisection finds is valid, even where the (epsilon, delta) p-value is not monotone
in epsilon: an ``(epsilon*, delta)``-DP mechanism is also ``(epsilon', delta)``-DP for every
``epsilon' >= epsilon*``, so the count's tail lies below the p-value at each such ``epsilon'`` and so
below their infimum, itself a p-value. A bound above ``epsilon*`` means a p-value below ``beta`` at some
``epsilon' > epsilon*``, so that infimum is below ``beta``: probability at most ``beta``.

Canaries enter the rows the generator is fitted on (after the holdout split, never the holdout) and
spend no budget: each is one more record under the release's add/remove-one-record guarantee. The
stages they pass through spend at most the release's epsilon, so the bound is comparable with it.

The bound holds with probability ``1 - beta`` over the inclusion coins and the mechanism's noise: for a
correctly implemented mechanism it exceeds the claimed epsilon with probability at most ``beta``. It is
never clipped to the claim: an empirical epsilon above the claimed one is evidence (at that confidence)
of a privacy bug, and the caller must treat it as a failed check, not round it away.

Every figure here depends on which canaries were included (secret randomness): restricted zone only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import binom

from safesynth.audit.attacks.base import MembershipAttack, create_attack
from safesynth.audit.reference import draw_column
from safesynth.schema import conform
from safesynth.spec import (
    ReleaseSpec,
)

__all__ = [
    "DEFAULT_ATTACK",
    "CanaryAudit",
    "OneRunBound",
    "audit_canaries",
    "canary_scores",
    "choose_inclusions",
    "default_guesses",
    "empirical_epsilon",
    "epsilon_lower_bound",
    "make_canaries",
    "one_run_p_value",
]

DEFAULT_ATTACK = "distance-to-closest-record"
#: The default abstention levels as fractions of ``m``: "included" guesses only (a memorised canary shows
#: as a near copy, a high score; a low score says little), then every canary guessed (half each way).
_TOP_FRACTIONS = (0.05, 0.1, 0.25, 0.5)


# ------------------------------------------------------------------------------------------ canaries


def make_canaries(spec: ReleaseSpec, m: int, rng: np.random.Generator) -> pd.DataFrame:
    """``m`` canary records drawn uniformly from the spec's declared domains, as a typed frame.

    Each column is drawn independently: categories and booleans uniformly, integers and floats uniformly
    on the declared bounds (floats rounded to the declared precision), datetimes uniformly at the
    declared resolution, texts as random lowercase tokens within ``max_length``. Independent uniform
    draws give combinations that real rows rarely have, and the random texts make canaries distinct, so
    a generator that memorises one betrays it. No canary has a null.

    Args:
        spec: the spec as loaded, with every domain declared (discovered domains are DP outputs of the
            private rows: canaries must not depend on them).
        m: number of canaries.
        rng: any generator: the canaries themselves may be public; which are included is the secret
            (:func:`choose_inclusions`).

    Returns:
        The spec's columns in the spec's order, with the pipeline's dtypes (:func:`safesynth.schema.conform`).

    Privacy: reads no private data and spends nothing; the canaries depend on the spec and ``rng`` only.

    Raises:
        ValueError: ``m`` is negative, or a column has no declared domain.
    """
    if m < 0:
        raise ValueError(f"`m` ({m}) must be >= 0")
    undeclared = [name for name, col in spec.columns.items() if not col.bounded]
    if undeclared:
        raise ValueError(f"columns {undeclared} must declare their domains (canaries use no other)")
    data = {name: draw_column(col, m, rng) for name, col in spec.columns.items()}
    return conform(pd.DataFrame(data, index=pd.RangeIndex(m)), spec)


def choose_inclusions(m: int, rng: np.random.Generator) -> np.ndarray:
    """Which canaries to insert: each independently with probability 1/2.

    Privacy: this is the audit's secret. ``rng`` must be seeded from a secure source
    (``np.random.default_rng(secrets.randbits(128))``), never from the spec's seed: an attacker who
    can replay the coins knows the answers, and the bound means nothing. The coins must also be drawn
    independently of the canaries' scores (before fitting), as the paper's theorem assumes.

    Raises:
        ValueError: ``m`` is negative.
    """
    if m < 0:
        raise ValueError(f"`m` ({m}) must be >= 0")
    return np.asarray(rng.random(m) < 0.5, dtype=bool)


def canary_scores(
    synthetic: pd.DataFrame,
    canaries: pd.DataFrame,
    spec: ReleaseSpec,
    *,
    attack: str | MembershipAttack = DEFAULT_ATTACK,
    reference: pd.DataFrame | None = None,
) -> np.ndarray:
    """One membership score per canary (higher: more likely included) from the released rows.

    The default attack is distance to closest record (minus the distance to the closest synthetic row,
    :class:`~safesynth.audit.attacks.DistanceToClosestRecord`); any registered attack can be named.
    A canary's score depends on that canary, the synthetic rows, ``reference`` and the spec only
    (:mod:`safesynth.audit.attacks.base`), never on which canaries were included.

    Args:
        synthetic: the released rows.
        canaries: the canaries, as :func:`make_canaries` drew them.
        spec: the spec (declared domains).
        attack: a registered attack's name, or an attack.
        reference: population rows for attacks that need them (DOMIAS, classifier): never canaries,
            whose inclusion is the secret. Not needed by the default attack.

    Privacy: spends nothing; the scores are exact figures on the release (restricted zone).

    Raises:
        KeyError: no attack has that name.
        ValueError: the attack needs reference rows and none were given.
    """
    model = create_attack(attack) if isinstance(attack, str) else attack
    ref = canaries.iloc[:0] if reference is None else reference
    scores = np.asarray(model.scores(synthetic=synthetic, reference=ref, targets=canaries, spec=spec),
                        dtype=float)
    if scores.shape != (len(canaries),):
        raise ValueError(f"attack `{model.name}` returned {scores.shape} scores for {len(canaries)} canaries")
    return scores


# ------------------------------------------------------------------------------------------- the bound


def one_run_p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Bound on P[at least ``correct`` of ``guesses`` right] for an ``(epsilon, delta)``-DP mechanism.

    ``P[Bin(r, q) >= v] + 2 m delta max_{i=1..v} P[v - i <= Bin(r, q) < v] / i`` with
    ``q = e^epsilon / (1 + e^epsilon)`` (Steinke, Nasr and Jagielski 2023: the (epsilon, delta) form of
    their main theorem; Appendix D's ``p_value_DP_audit``). With ``delta = 0`` it is the binomial tail
    alone (``scipy.stats.binom.sf``), exact.

    Raises:
        ValueError: not ``0 <= correct <= guesses <= canaries``, ``epsilon < 0`` or ``delta`` outside [0, 1).
    """
    m, r, v = canaries, guesses, correct
    if not 0 <= v <= r <= m:
        raise ValueError(f"`correct` ({v}) <= `guesses` ({r}) <= `canaries` ({m}) must hold, all >= 0")
    if not epsilon >= 0 or not 0.0 <= delta < 1.0:
        raise ValueError(f"`epsilon` ({epsilon}) must be >= 0 and `delta` ({delta}) in [0, 1)")
    q = float(expit(epsilon))
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0.0 or v == 0:
        return min(1.0, tail)
    # P[v - i <= Bin(r, q) < v] for i = 1..v, as a running sum from v - 1 down to 0.
    window = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float, beta: float) -> float:
    """The largest epsilon that ``correct`` right out of ``guesses`` rejects at level ``beta`` (0 if none).

    Bisection on :func:`one_run_p_value` (Appendix D's ``get_eps_audit``), returning the low end: the
    p-value there is below ``beta``, so the result never overstates the bound by the search's tolerance.

    Raises:
        ValueError: ``beta`` outside (0, 1), or the counts or ``delta`` are invalid.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"`beta` ({beta}) must be in (0, 1)")

    def rejected(epsilon: float) -> bool:
        return one_run_p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=epsilon,
                               delta=delta) < beta

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):  # ends: at e^hi / (1 + e^hi) == 1.0 the tail is 1 (correct >= 1 here)
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejected(mid) else (lo, mid)
    return lo


def default_guesses(m: int) -> tuple[tuple[int, int], ...]:
    """The default abstention levels ``(r_+, r_-)`` for ``m`` canaries: public (a function of ``m`` only).

    "Included" guesses only for 5%, 10%, 25% and 50% of the canaries, then every canary guessed, half
    each way. Duplicates (small ``m``) and empty levels are dropped.
    """
    levels = [(round(f * m), 0) for f in _TOP_FRACTIONS]
    levels.append((m - m // 2, m // 2))
    return tuple(dict.fromkeys(lv for lv in levels if sum(lv) > 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class OneRunBound:
    """The best bound over the abstention levels tried, each tested at ``beta / levels`` (Bonferroni).

    ``epsilon`` is a lower bound on the mechanism's epsilon (at its ``delta``) with confidence
    ``1 - beta`` overall; ``guessed_in`` and ``guessed_out`` (``r_+``, ``r_-``) and ``correct`` are
    those of the level that gave it (the first level when none is significant). Restricted zone.
    """

    epsilon: float
    canaries: int
    guessed_in: int
    guessed_out: int
    correct: int
    delta: float
    beta: float
    levels: int


def empirical_epsilon(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    beta: float = 0.05,
    guesses: Sequence[tuple[int, int]] | None = None,
) -> OneRunBound:
    """One-run lower bound on epsilon from the canaries' scores and their secret inclusion bits.

    For each level ``(r_+, r_-)``: guess "included" for the ``r_+`` highest scores and "excluded" for the
    ``r_-`` lowest (ties broken by canary order, which is independent of the coins), count the correct
    guesses and invert :func:`one_run_p_value` at ``beta / levels``. The best level is reported; by the
    union bound the maximum still holds with confidence ``1 - beta``.

    Args:
        scores: one score per canary (higher: more likely included); a function of the release only.
        included: the coins of :func:`choose_inclusions`.
        delta: the mechanism's claimed delta (the bound is on epsilon at this delta).
        beta: probability that the bound overstates the true epsilon (default 5%).
        guesses: the levels to try; they must not depend on the coins or the scores (default
            :func:`default_guesses`).

    Privacy: spends nothing. The result depends on the secret coins: restricted zone. With probability
    at least ``1 - beta`` it is at most the true epsilon of the mechanism (at ``delta``).

    Raises:
        ValueError: shapes differ, a score is not finite, a level is negative or guesses more than
            ``m`` canaries, or ``beta`` or ``delta`` is out of range.
    """
    s = np.asarray(scores, dtype=float)
    b = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != b.shape:
        raise ValueError(f"`scores` {s.shape} and `included` {b.shape} must be 1-D of the same length")
    if not np.isfinite(s).all():
        raise ValueError("`scores` must be finite")
    m = len(s)
    levels = tuple(default_guesses(m) if guesses is None else guesses)
    for r_in, r_out in levels:
        if r_in < 0 or r_out < 0 or r_in + r_out > m:
            raise ValueError(f"`guesses` ({r_in}, {r_out}) must be >= 0 and guess at most m ({m}) canaries")
    if not 0.0 < beta < 1.0 or not 0.0 <= delta < 1.0:
        raise ValueError(f"`beta` ({beta}) must be in (0, 1) and `delta` ({delta}) in [0, 1)")
    order = np.argsort(-s, kind="stable")  # one order for both ends: the two guess sets never overlap
    best = OneRunBound(epsilon=0.0, canaries=m, guessed_in=levels[0][0] if levels else 0,
                       guessed_out=levels[0][1] if levels else 0, correct=0, delta=delta, beta=beta,
                       levels=len(levels))
    for i, (r_in, r_out) in enumerate(levels):
        v = int(b[order[:r_in]].sum() + (~b[order[m - r_out:]]).sum())
        eps = epsilon_lower_bound(canaries=m, guesses=r_in + r_out, correct=v, delta=delta,
                                  beta=beta / len(levels))
        if i == 0 or eps > best.epsilon:
            best = OneRunBound(epsilon=eps, canaries=m, guessed_in=r_in, guessed_out=r_out, correct=v,
                               delta=delta, beta=beta, levels=len(levels))
    return best


# ------------------------------------------------------------------------------------------- the audit


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryAudit:
    """A canary audit's figures: restricted zone only.

    ``included`` (how many canaries were inserted) and the guess counts depend on the secret coins, and
    ``empirical_epsilon`` on both the coins and the private rows; none of it is a DP output. It belongs
    in the restricted reports, next to the claimed epsilon: a value above the claim is evidence, at
    confidence ``1 - beta``, that the release is less private than claimed.
    """

    attack: str
    canaries: int
    included: int
    guessed_in: int
    guessed_out: int
    correct: int
    empirical_epsilon: float
    delta: float
    beta: float
    levels: int

    @property
    def guesses(self) -> int:
        """Guesses made at the reported level (``r = r_+ + r_-``)."""
        return self.guessed_in + self.guessed_out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "guesses": self.guesses, "differentially_private": False,
                "method": "one-run audit (Steinke, Nasr and Jagielski 2023), best of `levels` abstention "
                          "levels each at beta / levels (Bonferroni)",
                "note": "depends on the secret canary inclusions: restricted reports only"}


def audit_canaries(
    synthetic: pd.DataFrame,
    canaries: pd.DataFrame,
    included: np.ndarray,
    *,
    spec: ReleaseSpec,
    delta: float,
    beta: float = 0.05,
    attack: str | MembershipAttack = DEFAULT_ATTACK,
    reference: pd.DataFrame | None = None,
    guesses: Sequence[tuple[int, int]] | None = None,
) -> CanaryAudit:
    """Score the canaries on the released rows, then bound epsilon.

    :func:`canary_scores`, then :func:`empirical_epsilon`; ``included`` from :func:`choose_inclusions`.

    Privacy: spends no budget; it is a measurement, not a mechanism. Its result depends on the secret
    coins and the private rows (restricted zone). ``delta`` is the release's claimed delta.
    """
    model = create_attack(attack) if isinstance(attack, str) else attack
    scores = canary_scores(synthetic, canaries, spec, attack=model, reference=reference)
    bound = empirical_epsilon(scores, included, delta=delta, beta=beta, guesses=guesses)
    return CanaryAudit(attack=model.name, canaries=bound.canaries, included=int(np.sum(included)),
                       guessed_in=bound.guessed_in, guessed_out=bound.guessed_out, correct=bound.correct,
                       empirical_epsilon=bound.epsilon, delta=delta, beta=beta, levels=bound.levels)
