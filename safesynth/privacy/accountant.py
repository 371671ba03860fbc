"""One accountant for the whole release: composed `dp_accounting` events -> (epsilon, delta).

Every stage that reads private data records a :class:`StageSpend` (its `DpEvent`, its own (epsilon,
delta) bound, and whether its noise came from a secure sampler). :class:`ReleaseAccount` composes them.

Reported epsilon: the minimum of two valid bounds at the release's delta,
  * the chosen accountant (RDP by default, PLD available) on the composed event, and
  * basic composition: the sum of the stages' own epsilons (each stage was calibrated to fit its share),
    with the sum of their deltas.
Both are upper bounds on the true privacy loss, so their minimum is too. The manifest records both
accountants' figures and the basic sum.

Pure epsilon-DP events that no `dp_accounting` event models exactly (the *discrete* Laplace mechanism,
whose privacy loss is +-epsilon like randomized response, and any release known only by its epsilon) are
`DiscreteLaplaceDpEvent`s. The PLD accountant supports them natively; for RDP we add the Renyi divergence
of binary randomized response at epsilon, which is the largest of any epsilon-DP mechanism at every
order (every epsilon-DP pair is a post-processing of it, Kairouz-Oh-Viswanath 2015), so it is sound.

OpenDP's zCDP measurements (MST, AIM) are ``ZCDpEvent``s, the RDP curve ``rho * alpha``; PLD has none, so
under PLD such a stage enters as the worst case of its own (epsilon, delta) bound
(:meth:`ReleaseAccount.events_for`). :func:`headroom` is what the composition leaves a mechanism calibrated
last (the llm's DP-SGD): the release's epsilon then rests on the accountant, not on basic composition.

A stage may also carry ``extra_delta``: the probability of a bad event its event does not model (a
threshold revealing a key seen once, Rogers 2023). Conditioned on the good events the composition is the
composition of the events, so the release is (epsilon(delta - sum extra_delta), delta)-DP: the accountant is
asked for epsilon at the release's delta minus the extra deltas.

Imports no torch: accounting stays fast to import and to test.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import PrivacyAccountant
from dp_accounting.rdp import rdp_privacy_accountant

from safesynth.errors import InternalError

if TYPE_CHECKING:
    from safesynth.privacy.planner import BudgetPlan

__all__ = [
    "Headroom",
    "ReleaseAccount",
    "StageSpend",
    "calibrate_noise_multiplier",
    "compose_epsilon",
    "event_from_dict",
    "event_to_dict",
    "headroom",
    "pure_dp_event",
    "pure_dp_rdp",
    "supports",
]

ACCOUNTANTS = ("rdp", "pld")


class _ExpectedNonConvergence(logging.Filter):
    """Drop dp_accounting's "failed to converge" warning for one RDP order.

    At large orders and small sampling rates the series for the sampled Gaussian's RDP does not converge;
    dp_accounting then *excludes that order* from the epsilon computation, which can only make epsilon
    larger (the minimum is over fewer orders), so the result stays an upper bound. The warning is expected
    during calibration and would otherwise flood every release's log. Other absl warnings pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in str(record.msg)


if not any(isinstance(f, _ExpectedNonConvergence) for f in logging.getLogger("absl").filters):
    logging.getLogger("absl").addFilter(_ExpectedNonConvergence())
# PLD discretisation: finer is tighter and slower; 1e-4 keeps a DP-SGD release under a few seconds.
_PLD_DISCRETIZATION = 1e-4


def _make(accountant: str) -> PrivacyAccountant:
    if accountant == "rdp":
        return rdp_privacy_accountant.RdpAccountant()
    if accountant == "pld":
        return pld_privacy_accountant.PLDAccountant(value_discretization_interval=_PLD_DISCRETIZATION)
    raise ValueError(f"`accountant` ({accountant!r}) must be one of {ACCOUNTANTS}")


def pure_dp_rdp(epsilon: float, orders: np.ndarray) -> np.ndarray:
    """Renyi divergence of binary randomized response at ``epsilon``: the RDP of any epsilon-DP pair.

    ``D_a = log(q e^(a eps) + p e^(-a eps)) / (a - 1)`` with ``p = e^eps / (1 + e^eps)``, ``q = 1 - p``.
    """
    orders = np.asarray(orders, dtype=np.float64)
    if epsilon == 0:
        return np.zeros_like(orders)
    log_p = -math.log1p(math.exp(-epsilon))
    log_q = -math.log1p(math.exp(epsilon)) if epsilon < 700 else -epsilon
    both = np.stack([log_q + orders * epsilon, log_p - orders * epsilon])
    top = both.max(axis=0)
    rdp: np.ndarray = (top + np.log(np.exp(both - top).sum(axis=0))) / (orders - 1.0)
    return rdp


def pure_dp_event(epsilon: float) -> dp_event.DpEvent:
    """An event for a release known only to be epsilon-DP (its worst case: randomized response)."""
    if not epsilon >= 0 or not math.isfinite(epsilon):
        raise ValueError(f"`epsilon` ({epsilon}) must be finite and >= 0")
    if epsilon == 0:
        return dp_event.NoOpDpEvent()
    return dp_event.DiscreteLaplaceDpEvent(noise_parameter=float(epsilon), sensitivity=1)


def _split_pure(event: dp_event.DpEvent, orders: np.ndarray) -> tuple[dp_event.DpEvent | None, np.ndarray]:
    """Separate discrete-Laplace (pure DP) parts, which the RDP accountant lacks, into an RDP curve."""
    if isinstance(event, dp_event.DiscreteLaplaceDpEvent):
        return None, pure_dp_rdp(event.noise_parameter * event.sensitivity, orders)
    if isinstance(event, dp_event.ComposedDpEvent):
        native, curve = [], np.zeros_like(orders, dtype=np.float64)
        for child in event.events:
            sub, extra = _split_pure(child, orders)
            if sub is not None:
                native.append(sub)
            curve = curve + extra
        return (dp_event.ComposedDpEvent(native) if native else None), curve
    if isinstance(event, dp_event.SelfComposedDpEvent):
        sub, extra = _split_pure(event.event, orders)
        return (dp_event.SelfComposedDpEvent(sub, event.count) if sub is not None else None), event.count * extra
    return event, np.zeros_like(orders, dtype=np.float64)


#: Epsilons already computed in this process, by (events' repr, delta, accountant): calibration evaluates
#: the same events again whenever a release with the same public parameters runs in the same process.
_EPSILONS: collections.OrderedDict[tuple[str, float, str], float] = collections.OrderedDict()
_EPSILONS_MAX = 4096
_EPSILONS_LOCK = threading.Lock()


def compose_epsilon(events: Sequence[dp_event.DpEvent], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` under ``accountant``.

    Returns ``inf`` when delta is 0 and an event is not pure, and 0 for no events. Results are memoised
    per process (a pure function of the events, whose ``repr`` lists every field exactly).
    """
    events = [e for e in events if not isinstance(e, dp_event.NoOpDpEvent)]
    if not events:
        return 0.0
    key = (repr(events), float(delta), accountant)
    if " object at 0x" in key[0]:  # an event without a field-by-field repr: not memoised
        return _compose_epsilon(events, delta=delta, accountant=accountant)
    with _EPSILONS_LOCK:
        if key in _EPSILONS:
            _EPSILONS.move_to_end(key)
            return _EPSILONS[key]
    epsilon = _compose_epsilon(events, delta=delta, accountant=accountant)
    with _EPSILONS_LOCK:
        _EPSILONS[key] = epsilon
        while len(_EPSILONS) > _EPSILONS_MAX:
            _EPSILONS.popitem(last=False)
    return epsilon


def _compose_epsilon(events: list[dp_event.DpEvent], *, delta: float, accountant: str) -> float:
    acc = _make(accountant)
    composed = dp_event.ComposedDpEvent(list(events))
    if accountant == "rdp":
        native, pure_curve = _split_pure(composed, acc.orders)
        if native is not None:
            if not acc.supports(native):
                raise ValueError(f"the {accountant} accountant does not support {native}")
            acc.compose(native)
        rdp = acc.rdp + pure_curve
        return float(rdp_privacy_accountant.compute_epsilon(acc.orders, rdp, delta)[0])
    if not acc.supports(composed):
        raise ValueError(f"the {accountant} accountant does not support {composed}")
    acc.compose(composed)
    return float(acc.get_epsilon(delta))


def supports(event: dp_event.DpEvent, accountant: str) -> bool:
    """Whether ``accountant`` composes ``event`` (pure-DP parts count as supported under RDP)."""
    acc = _make(accountant)
    if accountant == "rdp":
        native, _ = _split_pure(event, acc.orders)
        return native is None or bool(acc.supports(native))
    return bool(acc.supports(event))


def calibrate_noise_multiplier(
    make_event: Callable[[float], dp_event.DpEvent],
    *,
    epsilon: float,
    delta: float,
    accountant: str = "rdp",
    rel_tol: float = 1e-3,
    alongside: Sequence[dp_event.DpEvent] = (),
) -> float:
    """Smallest noise multiplier (within ``rel_tol``) whose event, composed with the events ``alongside``
    (already spent or planned, fixed), meets (epsilon, delta).

    Conservative: like Opacus, doubles until the target is met, then bisects and returns the *high*
    end, so the result never overshoots ``epsilon``; the final value is checked again.

    Raises:
        ValueError: the target cannot be met with any noise multiplier up to 1e6.
    """
    if not epsilon > 0:
        raise ValueError(f"`epsilon` ({epsilon}) must be > 0")

    fixed = list(alongside)

    def eps_of(m: float) -> float:
        return compose_epsilon([*fixed, make_event(m)], delta=delta, accountant=accountant)

    hi = 1.0
    while eps_of(hi) > epsilon:
        hi *= 2.0
        if hi > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 meets `epsilon` ({epsilon}) at `delta` ({delta})")
    lo = hi / 2.0
    while eps_of(lo) <= epsilon and lo > 1e-6:
        hi, lo = lo, lo / 2.0
    while (hi - lo) / hi > rel_tol:
        mid = (lo + hi) / 2.0
        if eps_of(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    if not eps_of(hi) <= epsilon:
        raise InternalError(f"calibration overshot: noise multiplier {hi:.6g} gives epsilon above `epsilon` ({epsilon})")
    return hi


#: Relative margin below the release's epsilon when a mechanism is calibrated against the composition
#: (:func:`headroom`): RDP's conversion is exact arithmetic; PLD's discretisation moves its figure slightly
#: with the events' representation, so it gets room for that.
HEADROOM_MARGIN = {"rdp": 1e-6, "pld": 5e-3}


@dataclass(frozen=True, slots=True, kw_only=True)
class Headroom:
    """What a mechanism may be calibrated against so the release's composition meets its target.

    ``events`` are those already spent plus the worst case of every stage still to come; the new
    mechanism's event composed with them must give at most ``epsilon`` at ``delta`` under ``accountant``.
    """

    events: tuple[dp_event.DpEvent, ...]
    epsilon: float
    delta: float
    accountant: str


def headroom(account: ReleaseAccount, plan: BudgetPlan, *, current: str) -> Headroom | None:
    """The release's composition left to the next mechanism of stage ``current``: ``account``'s spends so
    far, and every other stage of ``plan`` that has spent nothing yet at its planned (epsilon, delta) as its
    worst case (randomized response at epsilon, delta as a bad event: any (epsilon, delta)-DP mechanism is
    dominated by it). ``None`` when no delta is left to convert at.

    Calibrating against it keeps ``account.epsilon`` (after the later stages spend within their plan) at most
    ``plan.epsilon``: the accountant's figure is monotone in each event and in the bad events' delta.
    """
    events, extra = account.events_for(account.accountant)
    spent = {s.stage.split(".")[0] for s in account.spends}  # "generator.count" belongs to "generator"
    for stage in plan.stages:
        if stage.name != current and stage.name not in spent:
            events.append(pure_dp_event(stage.epsilon))
            extra += stage.delta
    left = account.delta - extra
    if not left > 0:
        return None
    return Headroom(events=tuple(e for e in events if not isinstance(e, dp_event.NoOpDpEvent)),
                    epsilon=plan.epsilon * (1.0 - HEADROOM_MARGIN[account.accountant]), delta=left,
                    accountant=account.accountant)


@dataclass(frozen=True, slots=True, kw_only=True)
class StageSpend:
    """What one stage spent: its event, its own bound, and how its noise was drawn.

    ``delta`` is the stage's own total delta (basic composition). ``extra_delta`` (<= ``delta``) is the
    part of it that ``event`` does not model (e.g. a threshold's chance of revealing a rare key); the
    accountant adds it on top instead of converting it.
    """

    stage: str
    event: dp_event.DpEvent
    epsilon: float
    delta: float
    mechanism: str
    secure_noise: bool
    detail: dict[str, Any] = field(default_factory=dict)
    extra_delta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "extra_delta": self.extra_delta,
            "secure_noise": self.secure_noise,
            "event": event_to_dict(self.event),
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpend:
        """Inverse of :meth:`to_dict` (the ledger stores spends this way)."""
        return cls(
            stage=str(data["stage"]),
            event=event_from_dict(data["event"]),
            epsilon=float(data["epsilon"]),
            delta=float(data["delta"]),
            mechanism=str(data["mechanism"]),
            secure_noise=bool(data["secure_noise"]),
            detail=dict(data.get("detail") or {}),
            extra_delta=float(data.get("extra_delta", 0.0)),
        )


@dataclass(slots=True)
class ReleaseAccount:
    """The composed spend of one release."""

    delta: float
    accountant: str = "rdp"
    spends: list[StageSpend] = field(default_factory=list)

    def add(self, spend: StageSpend) -> None:
        self.spends.append(spend)

    def events(self) -> list[dp_event.DpEvent]:
        return [s.event for s in self.spends]

    @property
    def basic_epsilon(self) -> float:
        return math.fsum(s.epsilon for s in self.spends)

    @property
    def basic_delta(self) -> float:
        return math.fsum(s.delta for s in self.spends)

    @property
    def extra_delta(self) -> float:
        """Delta of bad events the stages' events do not model; spent before the accountant's share."""
        return self.events_for(self.accountant)[1]

    def events_for(self, accountant: str) -> tuple[list[dp_event.DpEvent], float]:
        """The events ``accountant`` composes, and the delta of bad events it must add on top.

        A stage whose event the accountant cannot compose (a zCDP stage under PLD) enters as the worst case
        of its own bound: randomized response at its epsilon, with its delta as a bad event.
        """
        events: list[dp_event.DpEvent] = []
        extra: list[float] = []
        for s in self.spends:
            if supports(s.event, accountant):
                events.append(s.event)
                extra.append(s.extra_delta)
            else:
                events.append(pure_dp_event(s.epsilon))
                extra.append(s.delta)
        return events, math.fsum(extra)

    def epsilon_by(self, accountant: str) -> float:
        events, extra = self.events_for(accountant)
        if extra == 0.0:
            return compose_epsilon(events, delta=self.delta, accountant=accountant)
        if extra > self.delta:
            return math.inf
        return compose_epsilon(events, delta=self.delta - extra, accountant=accountant)

    @property
    def epsilon(self) -> float:
        """The release's epsilon at ``self.delta``: min(accountant, basic composition)."""
        if not self.spends:
            return 0.0
        composed = self.epsilon_by(self.accountant)
        if self.basic_delta <= self.delta:
            return min(composed, self.basic_epsilon)
        return composed

    @property
    def secure_noise(self) -> bool:
        return all(s.secure_noise for s in self.spends)

    @property
    def guarantee(self) -> str | None:
        """One line saying what the stated epsilon rests on when some noise is not from a secure sampler.

        ``None`` when every stage drew its noise from OpenDP's secure, exact samplers.
        """
        insecure = [s for s in self.spends if not s.secure_noise]
        if not insecure:
            return None
        sgd = [s.stage for s in insecure if s.mechanism.startswith("dp-sgd")]
        other = [s.stage for s in insecure if not s.mechanism.startswith("dp-sgd")]
        clauses = []
        if sgd:
            clauses.append(f"epsilon holds if torch's RNG is unpredictable; DP-SGD noise ({', '.join(sgd)}) is not "
                           "from a secure sampler")
        if other:
            clauses.append(f"noise of {', '.join(other)} is from a seeded, non-secure generator (a test noise "
                           "source): no guarantee against an adversary who can predict it")
        return "; ".join(clauses)

    def summary(self) -> dict[str, Any]:
        # Each accountant's own figure where it composes every stage as recorded (PLD has no zCDP event);
        # None where it would need the worst-case stand-in, which states a looser bound, not the release's.
        by: dict[str, float | None] = {
            name: (self.epsilon_by(name) if all(supports(s.event, name) for s in self.spends) else None)
            for name in ACCOUNTANTS}
        return {
            "epsilon": self.epsilon,
            # Only when secure_noise is false: what the stated epsilon then rests on (one line).
            **({} if (guarantee := self.guarantee) is None else {"guarantee": guarantee}),
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon_rdp": by["rdp"],
            "epsilon_pld": by["pld"],
            "epsilon_basic": self.basic_epsilon,
            "delta_basic": self.basic_delta,
            "extra_delta": self.extra_delta,
            "neighbouring": "add/remove one record",
            "secure_noise": self.secure_noise,
            "stages": [s.to_dict() for s in self.spends],
        }


# ------------------------------------------------------------------------------ event serialisation


def event_to_dict(event: dp_event.DpEvent) -> dict[str, Any]:
    """A JSON-able description of an event, for the ledger and the manifest."""
    if isinstance(event, dp_event.LaplaceDpEvent):
        return {"type": "laplace", "noise_multiplier": event.noise_multiplier}
    if isinstance(event, dp_event.GaussianDpEvent):
        return {"type": "gaussian", "noise_multiplier": event.noise_multiplier}
    if isinstance(event, dp_event.DiscreteLaplaceDpEvent):
        return {"type": "discrete_laplace", "noise_parameter": event.noise_parameter,
                "sensitivity": event.sensitivity}
    if isinstance(event, dp_event.PoissonSampledDpEvent):
        return {"type": "poisson_sampled", "sampling_probability": event.sampling_probability,
                "event": event_to_dict(event.event)}
    if isinstance(event, dp_event.SelfComposedDpEvent):
        return {"type": "self_composed", "count": event.count, "event": event_to_dict(event.event)}
    if isinstance(event, dp_event.ComposedDpEvent):
        return {"type": "composed", "events": [event_to_dict(e) for e in event.events]}
    if isinstance(event, dp_event.ZCDpEvent):
        return {"type": "zcdp", "rho": event.rho, "xi": event.xi}
    if isinstance(event, dp_event.NoOpDpEvent):
        return {"type": "noop"}
    raise ValueError(f"cannot serialise {type(event).__name__}")


def event_from_dict(data: dict[str, Any]) -> dp_event.DpEvent:
    """Inverse of :func:`event_to_dict`."""
    kind = data["type"]
    if kind == "laplace":
        return dp_event.LaplaceDpEvent(noise_multiplier=float(data["noise_multiplier"]))
    if kind == "gaussian":
        return dp_event.GaussianDpEvent(noise_multiplier=float(data["noise_multiplier"]))
    if kind == "discrete_laplace":
        return dp_event.DiscreteLaplaceDpEvent(float(data["noise_parameter"]), int(data["sensitivity"]))
    if kind == "poisson_sampled":
        return dp_event.PoissonSampledDpEvent(float(data["sampling_probability"]), event_from_dict(data["event"]))
    if kind == "self_composed":
        return dp_event.SelfComposedDpEvent(event_from_dict(data["event"]), int(data["count"]))
    if kind == "composed":
        return dp_event.ComposedDpEvent([event_from_dict(e) for e in data["events"]])
    if kind == "zcdp":
        return dp_event.ZCDpEvent(rho=float(data["rho"]), xi=float(data.get("xi", 0.0)))
    if kind == "noop":
        return dp_event.NoOpDpEvent()
    raise ValueError(f"unknown event type {kind!r}")
