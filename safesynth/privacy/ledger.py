"""The durable privacy-budget ledger: every release of a dataset, reserved before any data is read.

Storage: SQLAlchemy 2, SQLite by default (``$SAFESYNTH_HOME/ledger.db``, ``SAFESYNTH_HOME`` defaulting to
``./.safesynth``), any SQLAlchemy URL otherwise (e.g. ``postgresql+psycopg://...``). Two tables: one row
per dataset (its lifetime budget; the row every writer locks) and one row per release *attempt*
(planned (epsilon, delta), status, whether private data was read, and the stage spends as JSON, each
stage's event serialised with :func:`~safesynth.privacy.accountant.event_to_dict`).

Life of a release::

    reserve()  -> status "reserved"                 counted at its planned (epsilon, delta)
    mark_data_read()                                from now on never refunded
    commit(status=published|blocked|failed, spends) counted at what ``spends`` say was spent
                                                    (at the plan if ``spends`` is None)
    cancel()   -> status "cancelled"                refund; refused once data was read

A process that dies after ``mark_data_read`` leaves its row "reserved" with ``data_read`` set: it stays
counted at the planned amount forever (fail closed). A row that died *before* reading data also stays
counted until an operator cancels it (``find()`` then ``record.reservation()`` then ``cancel()``).

How ``remaining`` is computed, and why it is sound
--------------------------------------------------
Every row that is not cancelled counts as ``(epsilon_r, delta_r)``:

* no recorded spends (in flight, crashed, or committed with ``spends=None``): the planned (epsilon,
  delta). A release is calibrated stage by stage to fit its plan, so it is (planned epsilon, planned
  delta)-DP whatever it managed to do before it stopped.
* recorded spends: the release's own guarantee at its planned delta, computed at commit by
  :class:`~safesynth.privacy.accountant.ReleaseAccount` (the minimum of its accountant and of basic
  composition, both valid), with ``delta_r`` = the planned delta (0 if nothing was spent).

``spent = (fsum epsilon_r, fsum delta_r)`` and ``remaining = lifetime - spent`` (floored at 0), separately
for epsilon and delta. A reservation is accepted only if ``spent + requested <= lifetime`` for both,
the lifetime being the smaller of the one first recorded for the dataset and the one the caller passes.
This is *basic composition*, which stays valid when each release's parameters are chosen after seeing
earlier releases (fully adaptive composition: the basic-composition privacy filter of Rogers, Roth,
Ullman and Vadhan 2016). So the dataset's total privacy loss, over all releases ever counted, is at most
the recorded lifetime (epsilon, delta). Rounding: sums use ``math.fsum`` and no tolerance is added.

``spent_epsilon_composed`` is reported, never used to admit a release: the RDP composition of all stored
events at ``lifetime_delta - (sum of their extra deltas)``, rows without events entering as pure
epsilon-DP worst cases (randomized response) plus their delta, and then the minimum with the basic sum
(when the basic delta fits). It is a valid, tighter bound only if the releases were not chosen
adaptively (RDP accounting with the order chosen afterwards is not a privacy filter).

Concurrency: ``reserve`` reads the spent total and inserts the new row in one transaction holding the
dataset's lock: ``BEGIN IMMEDIATE`` on SQLite (one writer at a time across processes; every transaction
here begins that way), ``SELECT ... FOR UPDATE`` on the dataset row elsewhere (PostgreSQL, MySQL).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dp_accounting.dp_event import DpEvent
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from safesynth.errors import BudgetExceededError, LedgerError
from safesynth.privacy.accountant import ReleaseAccount, StageSpend, compose_epsilon, pure_dp_event
from safesynth.spec import ReleaseSpec

__all__ = ["BudgetSummary", "Ledger", "ReleaseRecord", "Reservation", "default_url"]

COMMIT_STATUSES = ("published", "blocked", "failed")

_metadata = MetaData()
_datasets = Table(
    "safesynth_budget_datasets",
    _metadata,
    Column("dataset", String(128), primary_key=True),
    Column("lifetime_epsilon", Double, nullable=False),
    Column("lifetime_delta", Double, nullable=False),
    Column("created_at", DateTime, nullable=False),
)
_releases = Table(
    "safesynth_budget_releases",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(128), ForeignKey(_datasets.c.dataset), nullable=False, index=True),
    Column("release_id", String(255), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("spec_digest", String(128), nullable=False),
    Column("accountant", String(16), nullable=False),
    Column("planned_epsilon", Double, nullable=False),
    Column("planned_delta", Double, nullable=False),
    Column("status", String(16), nullable=False),
    Column("data_read", Boolean, nullable=False),
    Column("spent_epsilon", Double, nullable=True),
    Column("spent_delta", Double, nullable=True),
    Column("stages", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("data_read_at", DateTime, nullable=True),
    Column("finished_at", DateTime, nullable=True),
    UniqueConstraint("dataset", "release_id", "attempt", name="uq_safesynth_release_attempt"),
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive, always UTC


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def default_url() -> str:
    """SQLite file ``$SAFESYNTH_HOME/ledger.db`` (``SAFESYNTH_HOME`` defaults to ``./.safesynth``)."""
    home = Path(os.environ.get("SAFESYNTH_HOME") or ".safesynth").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'ledger.db'}"


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
    """A dataset's lifetime budget, what its releases spent, and what remains (see module docstring)."""

    dataset: str
    lifetime_epsilon: float
    lifetime_delta: float
    spent_epsilon_basic: float
    spent_delta_basic: float
    spent_epsilon_composed: float
    remaining_epsilon: float
    remaining_delta: float
    releases: tuple[ReleaseRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "releases"}
        if not math.isfinite(self.spent_epsilon_composed):
            data["spent_epsilon_composed"] = None  # strict JSON has no inf
        data["composition"] = "basic (fully adaptive); composed = RDP at lifetime delta, informational"
        data["releases"] = [r.to_dict() for r in self.releases]
        return data


# -------------------------------------------------------------------------------------- row helpers


def _counted(row: RowMapping) -> tuple[float, float]:
    """What a stored row counts against the lifetime budget (see module docstring)."""
    if row["status"] == "cancelled":
        return 0.0, 0.0
    if row["spent_epsilon"] is not None:
        return float(row["spent_epsilon"]), float(row["spent_delta"])
    return float(row["planned_epsilon"]), float(row["planned_delta"])


def _stages(row: RowMapping) -> list[dict[str, Any]]:
    if row["stages"] is None:
        return []
    try:
        data = json.loads(row["stages"])
    except ValueError as exc:
        raise LedgerError(f"ledger row {row['id']} has unreadable stage spends") from exc
    return list(data)


def _record(row: RowMapping) -> ReleaseRecord:
    epsilon, delta = _counted(row)
    return ReleaseRecord(
        id=int(row["id"]), dataset=row["dataset"], release_id=row["release_id"], attempt=int(row["attempt"]),
        status=row["status"], epsilon=epsilon, delta=delta, planned_epsilon=float(row["planned_epsilon"]),
        planned_delta=float(row["planned_delta"]), spec_digest=row["spec_digest"],
        accountant=row["accountant"], data_read=bool(row["data_read"]),
        created_at=row["created_at"].replace(tzinfo=UTC), finished_at=_utc(row["finished_at"]),
        stages=tuple(_stages(row)),
    )


def _composed_epsilon(rows: Sequence[RowMapping], *, lifetime_delta: float) -> float:
    """RDP composition of every counted row at the lifetime delta (informational, see docstring)."""
    events: list[DpEvent] = []
    extra: list[float] = []
    for row in rows:
        epsilon, delta = _counted(row)
        if row["status"] == "cancelled" or (epsilon == 0.0 and delta == 0.0):
            continue
        if row["spent_epsilon"] is not None and row["stages"] is not None:
            spends = [StageSpend.from_dict(d) for d in _stages(row)]
            events.extend(s.event for s in spends)
            extra.extend(s.extra_delta for s in spends)
        else:
            events.append(pure_dp_event(epsilon))
            extra.append(delta)
    budget = lifetime_delta - math.fsum(extra)
    if budget < 0:
        return math.inf
    return compose_epsilon(events, delta=budget, accountant="rdp")


# ----------------------------------------------------------------------------------------- ledger


class Ledger:
    """The budget ledger behind one SQLAlchemy engine. Use :meth:`open`; thread-safe; close when done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # Opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None) -> Ledger:
        """Open (creating tables if needed) the ledger at ``url``; ``None``: :func:`default_url`."""
        url = url or default_url()
        try:
            parsed = make_url(url)
        except SQLAlchemyError as exc:
            raise LedgerError(f"`ledger.url` is not a valid SQLAlchemy URL ({exc.__class__.__name__})") from exc
        try:
            if parsed.get_backend_name() == "sqlite":
                engine = _sqlite_engine(parsed)
            else:
                engine = create_engine(parsed, pool_pre_ping=True)
            with engine.begin() as conn:
                _metadata.create_all(conn)
        except SQLAlchemyError as exc:
            shown = parsed.render_as_string(hide_password=True)
            raise LedgerError(f"cannot open the budget ledger {shown}: {_reason(exc)}") from exc
        return cls(engine)

    @classmethod
    def for_spec(cls, spec: ReleaseSpec) -> Ledger:
        """Open the spec's ledger; a relative SQLite path is resolved against the spec's directory."""
        url = spec.ledger.url
        if url is not None and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:" and not path.startswith("file:"):
                url = f"sqlite:///{spec.resolve(path)}"
        return cls.open(url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise LedgerError(f"budget ledger {self.url}: {_reason(exc)}") from exc

    # Reserving --------------------------------------------------------------------------------

    def reserve(
        self,
        *,
        dataset: str,
        release_id: str,
        spec_digest: str,
        epsilon: float,
        delta: float,
        lifetime_epsilon: float,
        lifetime_delta: float,
        accountant: str,
    ) -> Reservation:
        """Atomically claim (epsilon, delta) of the dataset's lifetime budget for a new release attempt.

        In-flight reservations of other processes count as spent. Call before reading any data.

        Raises:
            BudgetExceededError: the claim does not fit what remains (epsilon or delta).
            LedgerError: the ledger cannot be read or written.
        """
        _check_amounts(epsilon=epsilon, delta=delta, lifetime_epsilon=lifetime_epsilon,
                       lifetime_delta=lifetime_delta)
        self._ensure_dataset(dataset, lifetime_epsilon, lifetime_delta)
        with self._transaction() as conn:
            stored = self._lock_dataset(conn, dataset)
            limit_epsilon = min(float(stored["lifetime_epsilon"]), lifetime_epsilon)
            limit_delta = min(float(stored["lifetime_delta"]), lifetime_delta)
            rows = self._rows(conn, dataset)
            counted = [_counted(r) for r in rows]
            spent_epsilon = math.fsum(e for e, _ in counted)
            spent_delta = math.fsum(d for _, d in counted)
            if math.fsum([spent_epsilon, epsilon]) > limit_epsilon:
                raise BudgetExceededError(dataset, epsilon, _remaining(limit_epsilon, spent_epsilon))
            if math.fsum([spent_delta, delta]) > limit_delta:
                raise BudgetExceededError(dataset, delta, _remaining(limit_delta, spent_delta), what="delta")
            attempt = 1 + max((int(r["attempt"]) for r in rows if r["release_id"] == release_id), default=0)
            result = conn.execute(insert(_releases).values(
                dataset=dataset, release_id=release_id, attempt=attempt, spec_digest=spec_digest,
                accountant=accountant, planned_epsilon=float(epsilon), planned_delta=float(delta),
                status="reserved", data_read=False, created_at=_now(),
            ))
            key = result.inserted_primary_key
            if key is None:
                raise LedgerError(f"budget ledger {self.url}: the new reservation got no id")
            row_id = int(key[0])
        return Reservation(id=row_id, dataset=dataset, release_id=release_id, attempt=attempt,
                           spec_digest=spec_digest, epsilon=float(epsilon), delta=float(delta),
                           accountant=accountant)

    def _ensure_dataset(self, dataset: str, lifetime_epsilon: float, lifetime_delta: float) -> None:
        try:
            with self._engine.begin() as conn:
                if conn.execute(select(_datasets.c.dataset).where(_datasets.c.dataset == dataset)).first():
                    return
                conn.execute(insert(_datasets).values(dataset=dataset, lifetime_epsilon=float(lifetime_epsilon),
                                                      lifetime_delta=float(lifetime_delta), created_at=_now()))
        except IntegrityError:
            return  # another process created it first: fine
        except SQLAlchemyError as exc:
            raise LedgerError(f"budget ledger {self.url}: {_reason(exc)}") from exc

    @staticmethod
    def _lock_dataset(conn: Connection, dataset: str) -> RowMapping:
        row = conn.execute(
            select(_datasets).where(_datasets.c.dataset == dataset).with_for_update()
        ).mappings().one_or_none()
        if row is None:
            raise LedgerError(f"no budget recorded for dataset `{dataset}`")
        return row

    @staticmethod
    def _rows(conn: Connection, dataset: str, release_id: str | None = None) -> list[RowMapping]:
        query = select(_releases).where(_releases.c.dataset == dataset)
        if release_id is not None:
            query = query.where(_releases.c.release_id == release_id)
        return list(conn.execute(query.order_by(_releases.c.id)).mappings().all())

    # Progress ---------------------------------------------------------------------------------

    def mark_data_read(self, reservation: Reservation) -> None:
        """Record, durably, that private data is about to be read: the reservation is now spent."""
        with self._transaction() as conn:
            self._lock_dataset(conn, reservation.dataset)
            row = self._reserved_row(conn, reservation, action="mark data read")
            if not row["data_read"]:
                conn.execute(update(_releases).where(_releases.c.id == reservation.id)
                             .values(data_read=True, data_read_at=_now()))

    def commit(self, reservation: Reservation, *, status: str, spends: Sequence[StageSpend] | None = None) -> None:
        """Close a reservation as published, blocked or failed, recording what it actually spent.

        ``spends`` (the release account's stage spends) replace the planned amount; ``None`` keeps the
        planned (epsilon, delta) as spent.
        """
        if status not in COMMIT_STATUSES:
            raise ValueError(f"`status` ({status!r}) must be one of {COMMIT_STATUSES}")
        values: dict[str, Any] = {"status": status, "finished_at": _now()}
        if spends is not None:
            epsilon, delta = _release_guarantee(reservation, spends)
            values.update(stages=json.dumps([s.to_dict() for s in spends]), spent_epsilon=epsilon, spent_delta=delta)
        with self._transaction() as conn:
            self._lock_dataset(conn, reservation.dataset)
            self._reserved_row(conn, reservation, action="commit")
            conn.execute(update(_releases).where(_releases.c.id == reservation.id).values(**values))

    def cancel(self, reservation: Reservation) -> None:
        """Refund a reservation whose process never read private data.

        Raises:
            LedgerError: data was read (the budget stays spent), or the attempt is already closed.
        """
        with self._transaction() as conn:
            self._lock_dataset(conn, reservation.dataset)
            row = self._reserved_row(conn, reservation, action="cancel")
            if row["data_read"]:
                raise LedgerError(
                    f"release `{reservation.release_id}` (attempt {reservation.attempt}) already read private "
                    "data: its budget stays spent and cannot be refunded"
                )
            conn.execute(update(_releases).where(_releases.c.id == reservation.id).values(
                status="cancelled", spent_epsilon=0.0, spent_delta=0.0, finished_at=_now()))

    @staticmethod
    def _reserved_row(conn: Connection, reservation: Reservation, *, action: str) -> RowMapping:
        row = conn.execute(select(_releases).where(_releases.c.id == reservation.id)).mappings().one_or_none()
        if row is None or row["dataset"] != reservation.dataset or row["release_id"] != reservation.release_id:
            raise LedgerError(f"no reservation for release `{reservation.release_id}` in the ledger")
        if row["status"] != "reserved":
            raise LedgerError(f"cannot {action} release `{reservation.release_id}` (attempt "
                              f"{reservation.attempt}): it is already {row['status']}")
        return row

    # Reading ----------------------------------------------------------------------------------

    def find(self, dataset: str, release_id: str) -> list[ReleaseRecord]:
        """Every attempt of ``release_id`` on ``dataset``, oldest first (empty if none)."""
        with self._transaction() as conn:
            return [_record(r) for r in self._rows(conn, dataset, release_id)]

    def datasets(self) -> list[str]:
        with self._transaction() as conn:
            return list(conn.execute(select(_datasets.c.dataset).order_by(_datasets.c.dataset)).scalars())

    def summary(self, dataset: str) -> BudgetSummary:
        """The dataset's lifetime budget, spends and remaining budget.

        Raises:
            LedgerError: no release was ever reserved for ``dataset``.
        """
        with self._transaction() as conn:
            stored = conn.execute(select(_datasets).where(_datasets.c.dataset == dataset)).mappings().one_or_none()
            if stored is None:
                raise LedgerError(f"no budget recorded for dataset `{dataset}`")
            rows = self._rows(conn, dataset)
        lifetime_epsilon, lifetime_delta = float(stored["lifetime_epsilon"]), float(stored["lifetime_delta"])
        counted = [_counted(r) for r in rows]
        basic_epsilon = math.fsum(e for e, _ in counted)
        basic_delta = math.fsum(d for _, d in counted)
        composed = _composed_epsilon(rows, lifetime_delta=lifetime_delta)
        if basic_delta <= lifetime_delta:
            composed = min(composed, basic_epsilon)
        return BudgetSummary(
            dataset=dataset, lifetime_epsilon=lifetime_epsilon, lifetime_delta=lifetime_delta,
            spent_epsilon_basic=basic_epsilon, spent_delta_basic=basic_delta, spent_epsilon_composed=composed,
            remaining_epsilon=_remaining(lifetime_epsilon, basic_epsilon),
            remaining_delta=_remaining(lifetime_delta, basic_delta),
            releases=tuple(_record(r) for r in rows),
        )


# ----------------------------------------------------------------------------------------- helpers


def _sqlite_engine(url: Any) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        # Take the write lock up front: read-then-insert in reserve() is then serialised across processes.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _release_guarantee(reservation: Reservation, spends: Sequence[StageSpend]) -> tuple[float, float]:
    """A valid (epsilon, delta) for a release that spent ``spends`` (recorded even if over plan)."""
    if not spends:
        return 0.0, 0.0
    account = ReleaseAccount(delta=reservation.delta, accountant=reservation.accountant, spends=list(spends))
    epsilon = account.epsilon
    if math.isfinite(epsilon):
        return epsilon, reservation.delta
    return account.basic_epsilon, account.basic_delta  # basic composition is always valid


def _remaining(limit: float, spent: float) -> float:
    """``limit - spent`` floored at 0 and rounded down: a claim of this size is always admitted."""
    left = max(0.0, limit - spent)
    while left > 0 and math.fsum([spent, left]) > limit:
        left = math.nextafter(left, 0.0)
    return left


def _check_amounts(*, epsilon: float, delta: float, lifetime_epsilon: float, lifetime_delta: float) -> None:
    for name, value in (("epsilon", epsilon), ("lifetime_epsilon", lifetime_epsilon)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` ({value}) must be finite and > 0")
    for name, value in (("delta", delta), ("lifetime_delta", lifetime_delta)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` ({value}) must be in [0, 1)")


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return f"{exc.__class__.__name__}: {orig}" if orig is not None else exc.__class__.__name__

