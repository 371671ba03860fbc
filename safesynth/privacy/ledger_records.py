"""The ledger's records, and the rules that turn them into spent and remaining budget.

Pure functions over stored rows (no I/O): :mod:`safesynth.privacy.ledger` runs them inside its
transactions, so admission (``reserve``) and reporting (``summary``, ``budget show``) share one computation.

What a commit charges (``actual`` = the release's own guarantee from ``spends``, see below):

* ``published``: ``actual`` (the planned amount when ``spends`` is None).
* ``failed`` or ``blocked`` after data was read: ``max(planned, actual)`` per coordinate. A failed release
  may have spent in ways its partial spends do not show (a stage that died mid-way), so it is charged its
  plan at least.
* Any status before data was read: ``actual`` (``[]`` refunds everything).
* ``actual`` above the plan (beyond 1e-9 relative, float rounding of the stage shares) breaks the rule that a
  release never spends more than it reserved: the row is first recorded, durably, at ``actual`` (fail
  closed), then :class:`~safesynth.errors.InternalError` is raised.

How ``remaining`` is computed, and why it is sound
--------------------------------------------------
Every row that is not cancelled counts as ``(epsilon_r, delta_r)``: its planned amount while in flight or
when committed without spends (each stage is calibrated to fit its share of the plan, so the release is
(planned epsilon, planned delta)-DP whatever it did before it stopped), else the amount charged above. The
release's own guarantee is computed at commit by :class:`~safesynth.privacy.accountant.ReleaseAccount`
(the minimum of its accountant and of basic composition, both valid) at the planned delta.

``spent = (fsum epsilon_r, fsum delta_r)`` and ``remaining = lifetime - spent`` (floored at 0 and rounded
down so that a claim of exactly ``remaining`` is admitted), separately for epsilon and delta. A reservation
is admitted only if ``spent + requested <= lifetime`` for both; ``budget show`` reports these same figures.
This is *basic composition*, which stays valid when each release's parameters are chosen after seeing
earlier releases (fully adaptive composition: the basic-composition privacy filter of Rogers, Roth,
Ullman and Vadhan 2016). So the dataset's total privacy loss, over all releases ever counted, is at most
the recorded lifetime (epsilon, delta). Rounding: sums use ``math.fsum`` and no tolerance is added.

``spent_epsilon_composed`` is informational, never used to admit a release: the RDP composition of the
published releases' stored events at ``lifetime_delta - (sum of their extra deltas)``, every other counted
row entering as a pure epsilon-DP worst case (randomized response) plus its delta, and then the minimum
with the basic sum (when the basic delta fits). It is a valid, tighter bound only if the releases were not
chosen adaptively (RDP accounting with the order chosen afterwards is not a privacy filter).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from dp_accounting.dp_event import DpEvent
from sqlalchemy.engine import RowMapping

from safesynth.errors import (
    BudgetExceededError,
    LedgerError,
    LifetimeMismatchError,
    ReleaseIdConflictError,
    SourceMismatchError,
)
from safesynth.owner import Owner
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, compose_epsilon, pure_dp_event
from safesynth.privacy.source_identity import SourceIdentity

__all__ = ["BudgetSummary", "ReleaseRecord", "Reservation"]

#: Relative slack before an over-plan spend is refused: float rounding of stage shares (``eps * 0.1`` ...).
PLAN_SLACK = 1e-9


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, always UTC


def utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A release attempt's claim on the budget, returned by :meth:`Ledger.reserve`."""

    id: int
    dataset: str
    release_id: str
    attempt: int
    spec_digest: str
    epsilon: float
    delta: float
    accountant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRecord:
    """One release attempt as stored; ``epsilon``/``delta`` are what it counts against the lifetime."""

    id: int
    dataset: str
    release_id: str
    attempt: int
    status: str
    epsilon: float
    delta: float
    planned_epsilon: float
    planned_delta: float
    spec_digest: str
    accountant: str
    data_read: bool
    created_at: datetime
    finished_at: datetime | None
    owner: str | None = None
    stages: tuple[dict[str, Any], ...] = field(default=())

    def reservation(self) -> Reservation:
        """The reservation handle of this attempt (to commit or cancel it, e.g. after a crash)."""
        return Reservation(
            id=self.id, dataset=self.dataset, release_id=self.release_id, attempt=self.attempt,
            spec_digest=self.spec_digest, epsilon=self.planned_epsilon, delta=self.planned_delta,
            accountant=self.accountant,
        )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("id", "dataset")}
        data.update(created_at=self.created_at.isoformat(), stages=list(self.stages),
                    finished_at=self.finished_at.isoformat() if self.finished_at else None)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSummary:
    """A dataset's lifetime budget, what its releases spent, and what remains (see module docstring).

    ``remaining_*`` is exactly what :meth:`Ledger.reserve` admits against; ``spent_epsilon_composed`` is
    informational only.
    """

    dataset: str
    lifetime_epsilon: float
    lifetime_delta: float
    spent_epsilon_basic: float
    spent_delta_basic: float
    spent_epsilon_composed: float
    remaining_epsilon: float
    remaining_delta: float
    releases: tuple[ReleaseRecord, ...]
    source_key: str | None = None  # the source the budget is bound to (None: no release bound it yet)

    def overview(self) -> dict[str, Any]:
        """One line of ``safesynth budget list``: lifetime, spent, in flight and remaining.

        ``spent_*`` counts the closed releases, ``in_flight_*`` the reservations still open (at their plan);
        ``remaining = lifetime - spent - in flight``, exactly what :meth:`Ledger.reserve` admits against.
        """
        closed = [r for r in self.releases if r.status != "reserved"]
        open_ = [r for r in self.releases if r.status == "reserved"]
        return {
            "dataset": self.dataset, "lifetime_epsilon": self.lifetime_epsilon, "lifetime_delta": self.lifetime_delta,
            "spent_epsilon": math.fsum(r.epsilon for r in closed), "spent_delta": math.fsum(r.delta for r in closed),
            "in_flight_epsilon": math.fsum(r.epsilon for r in open_),
            "in_flight_delta": math.fsum(r.delta for r in open_), "in_flight_releases": len(open_),
            "remaining_epsilon": self.remaining_epsilon, "remaining_delta": self.remaining_delta,
            "releases": len(self.releases), "source_key": self.source_key,
        }

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "releases"}
        if not math.isfinite(self.spent_epsilon_composed):
            data["spent_epsilon_composed"] = None  # strict JSON has no inf
        data["composition"] = ("admission: summed spends (basic composition, fully adaptive), remaining = "
                               "lifetime - summed; composed = RDP at lifetime delta, informational only")
        data["releases"] = [r.to_dict() for r in self.releases]
        return data


@dataclass(frozen=True, slots=True)
class Budget:
    """Lifetime and spends of a dataset: the one computation behind admission and ``summary``.

    Admission is decided on the exact sum (``fsum`` of the amounts and the negated lifetime has the sign of
    the exact value), never on a rounded total, so no claim is admitted because a sum was rounded down.
    """

    dataset: str
    lifetime_epsilon: float
    lifetime_delta: float
    epsilons: tuple[float, ...]
    deltas: tuple[float, ...]

    @classmethod
    def of(cls, stored: RowMapping, rows: Sequence[RowMapping]) -> Budget:
        amounts = [counted(r) for r in rows]
        return cls(stored["dataset"], float(stored["lifetime_epsilon"]), float(stored["lifetime_delta"]),
                   tuple(e for e, _ in amounts), tuple(d for _, d in amounts))

    @property
    def spent_epsilon(self) -> float:
        return math.fsum(self.epsilons)

    @property
    def spent_delta(self) -> float:
        return math.fsum(self.deltas)

    @property
    def remaining_epsilon(self) -> float:
        return remaining(self.lifetime_epsilon, self.epsilons)

    @property
    def remaining_delta(self) -> float:
        return remaining(self.lifetime_delta, self.deltas)

    def admit(self, *, epsilon: float, delta: float) -> None:
        """Raise BudgetExceededError unless ``spent + (epsilon, delta)`` fits the lifetime (exactly)."""
        if not fits(self.lifetime_epsilon, self.epsilons, epsilon):
            raise BudgetExceededError(self.dataset, epsilon, self.remaining_epsilon)
        if not fits(self.lifetime_delta, self.deltas, delta):
            raise BudgetExceededError(self.dataset, delta, self.remaining_delta, what="delta")


# -------------------------------------------------------------------------------------- row helpers


def counted(row: RowMapping) -> tuple[float, float]:
    """What a stored row counts against the lifetime budget (see module docstring)."""
    if row["status"] == "cancelled":
        return 0.0, 0.0
    if row["spent_epsilon"] is not None:
        return float(row["spent_epsilon"]), float(row["spent_delta"])
    return float(row["planned_epsilon"]), float(row["planned_delta"])


def stages_of(row: RowMapping) -> list[dict[str, Any]]:
    if row["stages"] is None:
        return []
    try:
        data = json.loads(row["stages"])
    except ValueError as exc:
        raise LedgerError(f"ledger row {row['id']} has unreadable stage spends") from exc
    return list(data)


def owner_of(row: RowMapping) -> Owner | None:
    return Owner.from_json(row.get("owner"))


def record_of(row: RowMapping) -> ReleaseRecord:
    epsilon, delta = counted(row)
    owner = owner_of(row)
    return ReleaseRecord(
        id=int(row["id"]), dataset=row["dataset"], release_id=row["release_id"], attempt=int(row["attempt"]),
        status=row["status"], epsilon=epsilon, delta=delta, planned_epsilon=float(row["planned_epsilon"]),
        planned_delta=float(row["planned_delta"]), spec_digest=row["spec_digest"],
        accountant=row["accountant"], data_read=bool(row["data_read"]),
        created_at=row["created_at"].replace(tzinfo=UTC), finished_at=utc(row["finished_at"]),
        owner=owner.describe() if owner else None, stages=tuple(stages_of(row)),
    )


def composed_epsilon(rows: Sequence[RowMapping], *, lifetime_delta: float) -> float:
    """RDP composition of every counted row at the lifetime delta (informational, see docstring)."""
    events: list[DpEvent] = []
    extra: list[float] = []
    for row in rows:
        epsilon, delta = counted(row)
        if row["status"] == "cancelled" or (epsilon == 0.0 and delta == 0.0):
            continue
        # Only a published row is charged exactly its events' guarantee; others may be charged their plan.
        if row["status"] == "published" and row["spent_epsilon"] is not None and row["stages"] is not None:
            spends = [StageSpend.from_dict(d) for d in stages_of(row)]
            events.extend(s.event for s in spends)
            extra.extend(s.extra_delta for s in spends)
        else:
            events.append(pure_dp_event(epsilon))
            extra.append(delta)
    budget = lifetime_delta - math.fsum(extra)
    if budget < 0:
        return math.inf
    return compose_epsilon(events, delta=budget, accountant="rdp")


# ------------------------------------------------------------------------------------ rules


def reservation_of(row: RowMapping) -> Reservation:
    return Reservation(id=int(row["id"]), dataset=row["dataset"], release_id=row["release_id"],
                       attempt=int(row["attempt"]), spec_digest=row["spec_digest"],
                       epsilon=float(row["planned_epsilon"]), delta=float(row["planned_delta"]),
                       accountant=row["accountant"])


def require_status(row: RowMapping, reservation: Reservation, status: str, *, action: str) -> None:
    if row["status"] != status:
        raise LedgerError(f"cannot {action} release `{reservation.release_id}` (attempt "
                          f"{reservation.attempt}): it is already {row['status']}")


def check_lifetime(stored: RowMapping, epsilon: float, delta: float | None) -> None:
    """Refuse a lifetime that differs from the recorded one (``delta=None``: not declared, not checked)."""
    dataset = stored["dataset"]
    wanted = {"epsilon": float(epsilon), "delta": None if delta is None else float(delta)}
    diffs = [(name, value, float(stored[f"lifetime_{name}"])) for name, value in wanted.items()
             if value is not None and value != float(stored[f"lifetime_{name}"])]
    if not diffs:
        return
    said = " and ".join(f"`privacy.lifetime_{n}` ({v!r}) must equal the recorded {s!r}" for n, v, s in diffs)
    options = " ".join(f"--{n} {v!r}" for n, v, _ in diffs)
    raise LifetimeMismatchError(
        f"{said} of dataset `{dataset}`; to change the lifetime run `safesynth budget set-lifetime {dataset} "
        f"{options}`, or set the spec back")


def check_source(dataset: str, recorded: str | None, source: SourceIdentity, *, holder: str | None,
                 alias: str | None) -> None:
    """Refuse a source budgeted under another dataset name, or a dataset bound to another source.

    Args:
        dataset: the dataset being reserved.
        recorded: the source key recorded for it (``None``: not bound yet; this reservation binds it).
        source: the source the spec reads.
        holder: another dataset already bound to ``source.key``, if any.
        alias: another dataset bound to the same local file under another path (hard link, bind mount).
    """
    rename = "(the lifetime budget follows the data, not the name)"
    if holder is not None:
        raise SourceMismatchError(
            f"`dataset` ({dataset}) must be `{holder}`: source {source.key} is already budgeted as dataset "
            f"`{holder}` {rename}; if `{holder}` moved to other data, run `safesynth budget rebind {holder} "
            "--source-key NEW_SOURCE` first")
    if alias is not None:
        raise SourceMismatchError(
            f"`dataset` ({dataset}) must be `{alias}`: source {source.key} is the same file (device and inode) "
            f"as the source of dataset `{alias}` {rename}")
    if recorded is not None and recorded != source.key:
        raise SourceMismatchError(
            f"`source` ({source.key}) must be the source recorded for dataset `{dataset}` ({recorded}); if the "
            f"data moved, run `safesynth budget rebind {dataset} --source-key {source.key}`")


def check_digest(attempts: Sequence[Any], release_id: str, digest: str) -> None:
    """A release id belongs to one spec: refuse ``digest`` if an attempt that was not cancelled differs."""
    for row in attempts:
        if row["status"] != "cancelled" and row["spec_digest"] != digest:
            raise ReleaseIdConflictError(
                f"release id `{release_id}` of dataset `{row['dataset']}` was already used for a different spec "
                f"(digest {row['spec_digest'][:12]}, this spec {digest[:12]}); choose a new release id")


def charge(row: RowMapping, *, status: str, actual: tuple[float, float] | None) -> dict[str, float | None]:
    """The spent columns a commit writes (see the module docstring); ``None`` counts the plan."""
    if actual is None:
        return {"spent_epsilon": None, "spent_delta": None}
    epsilon, delta = actual
    if status in ("failed", "blocked") and row["data_read"]:
        epsilon = max(epsilon, float(row["planned_epsilon"]))
        delta = max(delta, float(row["planned_delta"]))
    return {"spent_epsilon": epsilon, "spent_delta": delta}


def over_plan(reservation: Reservation, actual: tuple[float, float]) -> bool:
    epsilon, delta = actual
    return (epsilon > reservation.epsilon * (1.0 + PLAN_SLACK)
            or delta > reservation.delta * (1.0 + PLAN_SLACK))


def release_guarantee(reservation: Reservation, spends: Sequence[StageSpend]) -> tuple[float, float]:
    """A valid (epsilon, delta) for a release that spent ``spends`` (recorded even if over plan)."""
    if not spends:
        return 0.0, 0.0
    account = ReleaseAccount(delta=reservation.delta, accountant=reservation.accountant, spends=list(spends))
    epsilon = account.epsilon
    if math.isfinite(epsilon):
        return epsilon, reservation.delta
    return account.basic_epsilon, account.basic_delta  # basic composition is always valid


def fits(limit: float, spent: Sequence[float], claim: float) -> bool:
    """Whether ``sum(spent) + claim <= limit`` holds exactly (no rounding in the comparison)."""
    return math.fsum([*spent, claim, -limit]) <= 0.0


def remaining(limit: float, spent: Sequence[float]) -> float:
    """The largest claim admitted: the largest double ``x >= 0`` that :func:`fits` (0 if none).

    ``limit - sum(spent)`` rounded to nearest may lie one ulp above the exact remainder; then the claim one
    ulp below is the answer. A claim of exactly this size is admitted, one ulp more is refused, and
    ``budget show`` prints this same number.
    """
    left = math.fsum([limit, *(-s for s in spent)])
    if left <= 0.0:
        return 0.0
    return left if fits(limit, spent, left) else math.nextafter(left, 0.0)


def check_amounts(*, epsilon: float, delta: float, lifetime_epsilon: float, lifetime_delta: float) -> None:
    for name, value in (("epsilon", epsilon), ("lifetime_epsilon", lifetime_epsilon)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` ({value}) must be finite and > 0")
    for name, value in (("delta", delta), ("lifetime_delta", lifetime_delta)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` ({value}) must be in [0, 1)")
