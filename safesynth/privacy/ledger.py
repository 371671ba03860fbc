"""The durable privacy-budget ledger: every release of a dataset, reserved before any data is read.

Storage (:mod:`safesynth.privacy.ledger_store`): SQLAlchemy 2, SQLite by default
(``$SAFESYNTH_HOME/ledger.db``), PostgreSQL with ``pip install 'safesynth[postgres]'``. Which ledger:
``--ledger-url`` on the command line, else ``$SAFESYNTH_LEDGER_URL`` (operator configuration, overriding
the spec), else the spec's ``ledger.url``, else the default; :func:`resolve_ledger_url` is the one place
that decides. :func:`preflight_ledger` checks it (URL, driver, directory, connection, tables) before a
release reserves anything; every problem there is a SpecError (exit 2).

Two tables: one row per dataset (its lifetime budget; the row every writer locks) and one row per release
*attempt* (planned (epsilon, delta), status, whether private data was read, the stage spends as JSON, and
the owner process of the attempt).

Life of a release::

    reserve()  -> status "reserved"                 counted at its planned (epsilon, delta)
    mark_data_read()                                from now on never refunded
    commit(status=published|blocked|failed, spends) counted as below
    cancel()   -> status "cancelled"                refund; refused once data was read
    abandon()  (operator, for a dead owner)         "failed" at the plan if data was read, else "cancelled"
    abandon(refund_only=True)  (``budget cancel``)  "cancelled"; refused whole once an attempt read data

What a commit charges, and how ``spent`` and ``remaining`` are computed (and why that is sound):
see :mod:`safesynth.privacy.ledger_records`. ``budget show`` reports exactly the figures ``reserve``
admits against.

Every transaction is retried on transient errors (a locked SQLite file, a PostgreSQL serialization
failure, a dropped connection) for up to ``retry_for`` seconds (60 by default). Repeating ``commit``,
``mark_data_read`` or ``cancel`` with the same arguments is a no-op, and a retried ``reserve`` finds the
row it may already have written (by its owner token), so a retry after an ambiguous failure (the write
landed, the acknowledgement did not) neither fails nor charges twice.

Release ids: an id belongs to one spec; reserving it with another spec digest raises
:class:`~safesynth.errors.ReleaseIdConflictError` (cancelled attempts do not bind it). While an attempt is
"reserved", a new attempt of the same id is refused (:class:`~safesynth.errors.ReleaseInProgressError`),
unless its owner is provably dead (same machine and pid namespace, and the pid is gone or recycled): that
stale attempt is then closed as :meth:`Ledger.abandon` would, and the new one proceeds. Once an attempt is
published, a new one raises :class:`~safesynth.errors.AlreadyPublishedError`.

Source: the budget belongs to the data, not to the name a spec gives it. Each dataset is bound, by its
first reservation, to the normalised identity of its source (:mod:`safesynth.privacy.source_identity`);
a reservation whose source is bound to another dataset, or whose dataset is bound to another source, is
refused (:class:`~safesynth.errors.SourceMismatchError`, exit 2). The operator moves a binding with
:meth:`Ledger.rebind_source` (``safesynth budget rebind``).

Lifetime: the first reservation of a dataset records its lifetime (epsilon, delta). A later spec that
declares a different one is refused (:class:`~safesynth.errors.LifetimeMismatchError`); the operator changes
it with :meth:`Ledger.set_lifetime` (``safesynth budget set-lifetime``), never below what is spent.

Concurrency: ``reserve`` reads the spent total and inserts the new row in one transaction holding the
dataset's lock: ``BEGIN IMMEDIATE`` on SQLite (one writer at a time across processes; every transaction
here begins that way), ``SELECT ... FOR UPDATE`` on the dataset row elsewhere (PostgreSQL). On PostgreSQL
every ledger transaction runs at ``READ COMMITTED``, set on the engine whatever the server's
``default_transaction_isolation`` says: once the row lock is granted, the next statement (reading the
spends) takes a fresh snapshot, which holds every reservation committed by the lock's earlier holders. At
``REPEATABLE READ`` the snapshot would be taken before the lock was granted, and two reservations could
both be admitted against the same stale total. Every writer of a release row (reserve, commit, cancel,
abandon) locks the dataset row first, so no spend changes unseen while it is held.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from safesynth.errors import (
    AlreadyPublishedError,
    InternalError,
    LedgerError,
    PrivacyError,
    RefundRefusedError,
    ReleaseInProgressError,
    SourceMismatchError,
    SpecError,
)
from safesynth.owner import Owner
from safesynth.privacy import ledger_store as store
from safesynth.privacy.accountant import StageSpend
from safesynth.privacy.ledger_records import (
    Budget,
    BudgetSummary,
    ReleaseRecord,
    Reservation,
    charge,
    check_amounts,
    check_digest,
    check_lifetime,
    check_source,
    composed_epsilon,
    fits,
    now,
    over_plan,
    owner_of,
    record_of,
    release_guarantee,
    require_status,
    reservation_of,
)
from safesynth.privacy.ledger_store import default_url, resolve_ledger_url
from safesynth.privacy.planner import BudgetPlan
from safesynth.privacy.source_identity import SourceIdentity, alias_is_live, source_identity
from safesynth.spec import ReleaseSpec

__all__ = [
    "BudgetSummary",
    "Ledger",
    "ReleaseRecord",
    "Reservation",
    "check_ledger",
    "default_url",
    "preflight_ledger",
    "resolve_ledger_url",
]

log = logging.getLogger(__name__)

COMMIT_STATUSES = ("published", "blocked", "failed")
_datasets, _releases = store.datasets, store.releases
T = TypeVar("T")


# ---------------------------------------------------------------------------------- URLs, pre-flight


def check_ledger(url: str, *, source: str = "spec") -> None:
    """Check that the ledger at ``url`` can be used, before anything is reserved in it.

    The URL parses, its driver is installed, a SQLite file's directory exists or can be created, and the
    database accepts a connection and has (or now gets) the ledger's tables. No budget is recorded.

    Args:
        url: an absolute URL, e.g. from :func:`resolve_ledger_url`.
        source: where the URL came from, named in errors (``spec``, ``SAFESYNTH_LEDGER_URL`` ...).

    Raises:
        SpecError: one line naming ``ledger.url`` and what to fix (exit code 2).
    """
    try:
        Ledger.open(url, source=source).close()
    except LedgerError as exc:
        raise SpecError(f"`ledger.url` ({store.display_url(url)}{_from(source)}) cannot be used: {exc}") from exc


def preflight_ledger(spec: ReleaseSpec) -> str:
    """Resolve the spec's ledger (environment first) and check it; call before reserving.

    Returns:
        The resolved URL, password hidden (for logs).

    Raises:
        SpecError: the ledger URL cannot be used (exit code 2).
    """
    url, source = store.resolve_with_source(spec)
    check_ledger(url, source=source)
    return store.display_url(url)


def _from(source: str) -> str:
    return "" if source == "spec" else f", from {source}"


# ----------------------------------------------------------------------------------------- ledger


class Ledger:
    """The budget ledger behind one SQLAlchemy engine. Use :meth:`open`; thread-safe; close when done."""

    def __init__(self, engine: Engine, *, retry_for: float = 60.0, missing: frozenset[str] = frozenset()) -> None:
        self._engine = engine
        self._retry_for = retry_for
        # An older ledger opened read-only lacks the newer columns (``missing``): never select them.
        self._columns = [c for c in _releases.c if c.name not in missing]
        self._dataset_columns = [c for c in _datasets.c if c.name not in missing]

    # Opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, *, source: str = "spec", lock_timeout: float = 5.0,
             retry_for: float | None = None) -> Ledger:
        """Open (creating the directory and tables if needed) the ledger at ``url``.

        Args:
            url: a SQLAlchemy URL; ``None``: :func:`resolve_ledger_url` without a spec.
            source: where ``url`` came from, named in errors.
            lock_timeout: seconds a statement waits for another writer's lock before failing (SQLite's busy
                timeout, PostgreSQL's ``lock_timeout``); the failure is then retried.
            retry_for: seconds :meth:`commit` and the other closing writes keep retrying transient errors;
                default: ``$SAFESYNTH_LEDGER_RETRY_SECONDS`` (operator configuration), else 60.

        Raises:
            SpecError: the URL, its driver or its SQLite directory is unusable.
            LedgerError: the database cannot be reached or its tables created.
        """
        if url is None:
            url, source = store.resolve_with_source()
        if retry_for is None:
            retry_for = store.retry_seconds()
        parsed = store.parse_checked(url, source=source)
        if parsed.get_backend_name() == "sqlite":
            store.ensure_sqlite_parent(parsed, source=source)
        engine = store.make_engine(parsed, lock_timeout=lock_timeout)
        try:
            store.with_retries(lambda: _prepare(engine, create=True), what="opening", retry_for=retry_for)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise LedgerError(f"cannot open the budget ledger {store.display_url(parsed)}: {_reason(exc)}") from exc
        return cls(engine, retry_for=retry_for)

    @classmethod
    def open_existing(cls, url: str, *, source: str = "spec") -> Ledger | None:
        """Open the ledger at ``url`` only if it exists: creates no file, directory or table.

        Returns:
            The ledger, or ``None`` when nothing was ever recorded there (no SQLite file, or no tables).
        """
        parsed = store.parse_checked(url, source=source)
        path = store.sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None
        if path is not None and not path.is_file():
            return None
        engine = store.make_engine(parsed, lock_timeout=5.0)
        try:
            with engine.connect() as conn:
                found = store.tables_exist(conn)
                missing = store.missing_columns(conn) if found else set()
        except SQLAlchemyError as exc:
            engine.dispose()
            raise LedgerError(f"cannot open the budget ledger {store.display_url(parsed)}: {_reason(exc)}") from exc
        if not found:
            engine.dispose()
            return None
        return cls(engine, missing=frozenset(missing))

    @classmethod
    def for_spec(cls, spec: ReleaseSpec) -> Ledger:
        """Open the ledger a release of ``spec`` uses (see :func:`resolve_ledger_url`)."""
        url, source = store.resolve_with_source(spec)
        return cls.open(url, source=source)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def _run(self, body: Callable[[Connection], T], *, what: str) -> T:
        """Run ``body`` in one transaction; retry it on transient errors (it must be safe to repeat)."""

        def once() -> T:
            with self._engine.begin() as conn:
                return body(conn)

        try:
            return store.with_retries(once, what=what, retry_for=self._retry_for)
        except SQLAlchemyError as exc:
            raise LedgerError(f"budget ledger {self.url}: {_reason(exc)}") from exc

    # Reserving --------------------------------------------------------------------------------

    def reserve_for_spec(self, spec: ReleaseSpec, *, release_id: str, plan: BudgetPlan) -> Reservation:
        """:meth:`reserve` the plan of a release of ``spec``, with the spec's digest, lifetime and source.

        An undeclared ``privacy.lifetime_delta`` (derived from the release's epsilon and delta) only sets
        the lifetime of a new dataset; it never conflicts with the recorded one. The source's identity
        (:func:`~safesynth.privacy.source_identity.source_identity` of ``spec.source_uri``) binds the
        budget to the data, whatever ``dataset`` is called.
        """
        return self.reserve(
            dataset=spec.dataset, release_id=release_id, spec_digest=spec.digest(), epsilon=plan.epsilon,
            delta=plan.delta, lifetime_epsilon=spec.privacy.lifetime_epsilon,
            lifetime_delta=spec.privacy.effective_lifetime_delta, accountant=plan.accountant,
            lifetime_delta_declared=spec.privacy.lifetime_delta is not None,
            source=source_identity(spec.source_uri),
        )

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
        lifetime_delta_declared: bool = True,
        source: SourceIdentity | None = None,
    ) -> Reservation:
        """Atomically claim (epsilon, delta) of the dataset's lifetime budget for a new release attempt.

        In-flight reservations of other processes count as spent. Call before reading any data.

        Args:
            lifetime_delta_declared: False when ``lifetime_delta`` is a default the spec derived, not a
                declared value: it then only sets the lifetime of a dataset seen for the first time.
            source: the identity of the data read; bound to ``dataset`` by its first reservation.
                ``None`` checks nothing (callers without a spec, such as tests of the budget rules).

        Raises:
            SourceMismatchError: ``source`` is bound to another dataset, or ``dataset`` to another
                source (exit 2).
            LifetimeMismatchError: the lifetime differs from the recorded one (exit 2).
            ReleaseIdConflictError: ``release_id`` was used for a different spec digest (exit 2).
            AlreadyPublishedError: an attempt of ``release_id`` is already published (exit 0).
            ReleaseInProgressError: another attempt of ``release_id`` is in flight and its owner is not
                provably dead.
            BudgetExceededError: the claim does not fit what remains (epsilon or delta; exit 3).
            LedgerError: the ledger cannot be read or written.
        """
        check_amounts(epsilon=epsilon, delta=delta, lifetime_epsilon=lifetime_epsilon,
                      lifetime_delta=lifetime_delta)
        self._ensure_dataset(dataset, lifetime_epsilon, lifetime_delta)
        owner = Owner.current()
        claim = {"dataset": dataset, "release_id": release_id, "spec_digest": spec_digest, "accountant": accountant,
                 "planned_epsilon": float(epsilon), "planned_delta": float(delta)}

        def body(conn: Connection) -> Reservation:
            stored = self._lock_dataset(conn, dataset)
            check_lifetime(stored, lifetime_epsilon, lifetime_delta if lifetime_delta_declared else None)
            self._bind_source(conn, stored, source)
            attempts = self._rows(conn, dataset, release_id)
            for row in attempts:
                if (o := owner_of(row)) is not None and o.token == owner.token:
                    return reservation_of(row)  # our own row: a retry after an ambiguous commit
            self._clear_way(conn, attempts, release_id, spec_digest)
            Budget.of(stored, self._rows(conn, dataset)).admit(epsilon=epsilon, delta=delta)
            attempt = 1 + max((int(r["attempt"]) for r in attempts), default=0)
            conn.execute(insert(_releases).values(
                **claim, attempt=attempt, status="reserved", data_read=False, created_at=now(),
                owner=owner.to_json()))
            row = conn.execute(self._select().where(
                _releases.c.dataset == dataset, _releases.c.release_id == release_id,
                _releases.c.attempt == attempt)).mappings().one()
            return reservation_of(row)

        return self._run(body, what=f"reserving release `{release_id}`")

    def _clear_way(self, conn: Connection, attempts: Sequence[RowMapping], release_id: str, digest: str) -> None:
        """Refuse a new attempt of ``release_id`` unless earlier ones are closed; close provably stale ones."""
        check_digest(attempts, release_id, digest)
        for row in attempts:
            if row["status"] == "published":
                raise AlreadyPublishedError(f"release `{release_id}` of dataset `{row['dataset']}` is already "
                                            f"published (attempt {row['attempt']}); nothing to do")
        for row in attempts:
            if row["status"] != "reserved":
                continue
            owner = owner_of(row)
            if owner is not None and owner.state() == "dead":
                self._close_stale(conn, row, why=f"its owner ({owner.describe()}) is gone")
                continue
            where = owner.describe() if owner else "an unrecorded process"
            raise ReleaseInProgressError(
                f"release `{release_id}` of dataset `{row['dataset']}` is already in flight (attempt "
                f"{row['attempt']}, {where}); wait for it, or if that process is gone run "
                f"`safesynth budget abandon {row['dataset']} {release_id}`")

    @staticmethod
    def _close_stale(conn: Connection, row: RowMapping, *, why: str) -> None:
        """Close an in-flight attempt: "failed" at its plan if it read data (no refund), else "cancelled"."""
        if row["data_read"]:
            values = {"status": "failed", "spent_epsilon": row["planned_epsilon"],
                      "spent_delta": row["planned_delta"]}
        else:
            values = {"status": "cancelled", "spent_epsilon": 0.0, "spent_delta": 0.0}
        conn.execute(update(_releases).where(_releases.c.id == row["id"]).values(**values, finished_at=now()))
        log.warning("ledger: closed attempt %s of release %s as %s: %s", row["attempt"], row["release_id"],
                    values["status"], why)

    def _bind_source(self, conn: Connection, stored: RowMapping, source: SourceIdentity | None) -> None:
        """Check ``source`` against the bindings (see :func:`check_source`) and bind it to the dataset."""
        if source is None or "source_key" not in stored:
            return
        dataset = stored["dataset"]
        others = _datasets.c.dataset != dataset
        holder = conn.execute(select(_datasets.c.dataset).where(_datasets.c.source_key == source.key, others)
                              ).scalars().first()
        alias = None
        if source.inode is not None:
            aliases = conn.execute(select(_datasets.c.dataset, _datasets.c.source_key).where(
                _datasets.c.source_inode == source.inode, others)).all()
            alias = next((name for name, key in aliases if key and alias_is_live(key, source.inode)), None)
        check_source(dataset, stored["source_key"], source, holder=holder, alias=alias)
        values = {"source_key": source.key} if stored["source_key"] is None else {}
        if source.inode is not None and source.inode != stored["source_inode"]:
            values["source_inode"] = source.inode  # a refreshed file at the same path: a new inode
        if values:
            conn.execute(update(_datasets).where(_datasets.c.dataset == dataset).values(**values))

    def _ensure_dataset(self, dataset: str, lifetime_epsilon: float, lifetime_delta: float) -> None:
        def body(conn: Connection) -> None:
            if conn.execute(select(_datasets.c.dataset).where(_datasets.c.dataset == dataset)).first():
                return
            conn.execute(insert(_datasets).values(dataset=dataset, lifetime_epsilon=float(lifetime_epsilon),
                                                  lifetime_delta=float(lifetime_delta), created_at=now()))

        try:
            self._run(body, what="recording the dataset")
        except LedgerError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise  # an IntegrityError means another process created it first: fine

    def _lock_dataset(self, conn: Connection, dataset: str) -> RowMapping:
        row = conn.execute(
            select(*self._dataset_columns).where(_datasets.c.dataset == dataset).with_for_update()
        ).mappings().one_or_none()
        if row is None:
            raise LedgerError(f"no budget recorded for dataset `{dataset}`")
        return row

    def _select(self) -> Any:
        return select(*self._columns)

    def _rows(self, conn: Connection, dataset: str, release_id: str | None = None) -> list[RowMapping]:
        query = self._select().where(_releases.c.dataset == dataset)
        if release_id is not None:
            query = query.where(_releases.c.release_id == release_id)
        return list(conn.execute(query.order_by(_releases.c.id)).mappings().all())

    # Progress ---------------------------------------------------------------------------------

    def mark_data_read(self, reservation: Reservation) -> None:
        """Record, durably, that private data is about to be read: the reservation is now spent.

        Retries transient errors; marking twice is a no-op.
        """

        def body(conn: Connection) -> None:
            self._lock_dataset(conn, reservation.dataset)
            row = self._attempt_row(conn, reservation)
            require_status(row, reservation, "reserved", action="mark data read")
            if not row["data_read"]:
                conn.execute(update(_releases).where(_releases.c.id == reservation.id)
                             .values(data_read=True, data_read_at=now()))

        self._run(body, what="marking data read")

    def commit(self, reservation: Reservation, *, status: str, spends: Sequence[StageSpend] | None = None) -> None:
        """Close a reservation as published, blocked or failed, and charge it.

        Retries transient errors for up to ``retry_for`` seconds; committing again with the same status
        and spends is a no-op (safe after an ambiguous failure).

        Privacy:
            Charged against the lifetime: the release's own guarantee from ``spends`` if published (the
            plan if ``spends`` is None); at least the plan, ``max(planned, actual)``, if it failed or was
            blocked after reading data; never less than what it actually spent (see
            :mod:`~safesynth.privacy.ledger_records`).

        Args:
            reservation: the handle :meth:`reserve` returned.
            status: ``published``, ``blocked`` or ``failed``.
            spends: the release account's stage spends; ``None`` charges the planned amount.

        Raises:
            InternalError: ``spends`` exceed the plan; the row is recorded at the actual amount first.
            LedgerError: the attempt is already closed with another status, or the ledger is unusable.
        """
        if status not in COMMIT_STATUSES:
            raise ValueError(f"`status` ({status!r}) must be one of {COMMIT_STATUSES}")
        actual = None if spends is None else release_guarantee(reservation, spends)
        stages = None if spends is None else json.dumps([s.to_dict() for s in spends])

        def body(conn: Connection) -> None:
            self._lock_dataset(conn, reservation.dataset)
            row = self._attempt_row(conn, reservation)
            values = charge(row, status=status, actual=actual)
            if row["status"] == status and (row["spent_epsilon"], row["spent_delta"]) == (
                    values["spent_epsilon"], values["spent_delta"]):
                return  # already committed exactly so: a retry
            require_status(row, reservation, "reserved", action="commit")
            conn.execute(update(_releases).where(_releases.c.id == reservation.id)
                         .values(**values, stages=stages, status=status, finished_at=now()))

        self._run(body, what=f"committing release `{reservation.release_id}` as {status}")
        if actual is not None and over_plan(reservation, actual):
            raise InternalError(
                f"release `{reservation.release_id}` spent (epsilon {actual[0]:.6g}, delta {actual[1]:.3g}), "
                f"more than its plan ({reservation.epsilon:.6g}, {reservation.delta:.3g}); recorded as spent")

    def cancel(self, reservation: Reservation) -> None:
        """Refund a reservation whose process never read private data (cancelling twice is a no-op).

        Raises:
            RefundRefusedError: data was read (the budget stays spent).
            LedgerError: the attempt is already closed.
        """

        def body(conn: Connection) -> None:
            self._lock_dataset(conn, reservation.dataset)
            row = self._attempt_row(conn, reservation)
            if row["status"] == "cancelled":
                return
            require_status(row, reservation, "reserved", action="cancel")
            if row["data_read"]:
                raise RefundRefusedError(
                    f"release `{reservation.release_id}` (attempt {reservation.attempt}) already read private "
                    "data: its budget stays spent and cannot be refunded"
                )
            conn.execute(update(_releases).where(_releases.c.id == reservation.id).values(
                status="cancelled", spent_epsilon=0.0, spent_delta=0.0, finished_at=now()))

        self._run(body, what="cancelling a reservation")

    def _attempt_row(self, conn: Connection, reservation: Reservation) -> RowMapping:
        row = conn.execute(self._select().where(_releases.c.id == reservation.id)).mappings().one_or_none()
        if row is None or row["dataset"] != reservation.dataset or row["release_id"] != reservation.release_id:
            raise LedgerError(f"no reservation for release `{reservation.release_id}` in the ledger")
        return row

    # Operator actions -------------------------------------------------------------------------

    def abandon(self, dataset: str, release_id: str, *, refund_only: bool = False) -> list[ReleaseRecord]:
        """Close the in-flight attempts of ``release_id`` whose process is gone (operator command).

        Each is closed as "failed" at its planned amount if it read data (never refunded), else
        "cancelled" (refunded). Use it for a crash on another host, which :meth:`reserve` cannot verify.

        Args:
            refund_only: close nothing unless every in-flight attempt never read data, so that all of them
                are refunded (``safesynth budget cancel``); an attempt that read data is refused whole.

        Returns:
            The closed attempts, as now recorded.

        Raises:
            LedgerError: no attempt is in flight, or its owner runs on this machine and is alive.
            RefundRefusedError: ``refund_only`` and an in-flight attempt already read private data.
        """

        def body(conn: Connection) -> list[int]:
            self._lock_dataset(conn, dataset)
            rows = [r for r in self._rows(conn, dataset, release_id) if r["status"] == "reserved"]
            if not rows:
                raise LedgerError(f"release `{release_id}` of dataset `{dataset}` has no attempt in flight")
            read = [r for r in rows if r["data_read"]]
            if refund_only and read:
                raise RefundRefusedError(
                    f"release `{release_id}` of dataset `{dataset}` (attempt {read[0]['attempt']}) already read "
                    "private data: its budget stays spent and cannot be refunded; if its process is gone, close "
                    f"it at its plan with `safesynth budget abandon {dataset} {release_id}`")
            for row in rows:
                owner = owner_of(row)
                if owner is not None and owner.state() == "alive":
                    raise LedgerError(f"release `{release_id}` (attempt {row['attempt']}) is still running as "
                                      f"{owner.describe()}; stop that process first")
            for row in rows:
                self._close_stale(conn, row, why="abandoned by the operator")
            return [int(r["id"]) for r in rows]

        ids = self._run(body, what=f"abandoning release `{release_id}`")
        return [r for r in self.find(dataset, release_id) if r.id in ids]

    def set_lifetime(self, dataset: str, *, epsilon: float, delta: float | None = None) -> BudgetSummary:
        """Change the dataset's recorded lifetime budget (operator command); specs must then match it.

        Args:
            dataset: the dataset; recorded now if it has no budget yet (then ``delta`` is required).
            epsilon: the new lifetime epsilon.
            delta: the new lifetime delta; ``None`` keeps the recorded one.

        Raises:
            PrivacyError: the new lifetime is below what the dataset has already spent (in-flight
                reservations included).
            ValueError: a value is out of range, or ``delta`` is missing for a new dataset.
        """

        def body(conn: Connection) -> None:
            stored = conn.execute(select(*self._dataset_columns).where(_datasets.c.dataset == dataset)
                                  .with_for_update()).mappings().one_or_none()
            if stored is None:
                if delta is None:
                    raise ValueError(f"dataset `{dataset}` has no recorded budget: `delta` is required")
                check_amounts(epsilon=epsilon, delta=0.0, lifetime_epsilon=epsilon, lifetime_delta=delta)
                conn.execute(insert(_datasets).values(dataset=dataset, lifetime_epsilon=float(epsilon),
                                                      lifetime_delta=float(delta), created_at=now()))
                return
            new_delta = float(stored["lifetime_delta"]) if delta is None else float(delta)
            check_amounts(epsilon=epsilon, delta=0.0, lifetime_epsilon=epsilon, lifetime_delta=new_delta)
            budget = Budget.of(stored, self._rows(conn, dataset))
            for name, value, amounts in (("epsilon", epsilon, budget.epsilons), ("delta", new_delta, budget.deltas)):
                if not fits(value, amounts, 0.0):
                    raise PrivacyError(f"lifetime `{name}` ({value:.6g}) must be >= {math.fsum(amounts):.6g}, what "
                                       f"dataset `{dataset}` has already spent (in-flight reservations included)")
            conn.execute(update(_datasets).where(_datasets.c.dataset == dataset)
                         .values(lifetime_epsilon=float(epsilon), lifetime_delta=new_delta))

        self._run(body, what="setting the lifetime budget")
        log.warning("ledger: lifetime budget of dataset %s set to epsilon %.6g%s", dataset, epsilon,
                    "" if delta is None else f", delta {delta:.3g}")
        return self.summary(dataset)

    def rebind_source(self, dataset: str, source: str) -> BudgetSummary:
        """Bind ``dataset``'s budget to another source (operator command), e.g. after the data moved.

        Args:
            dataset: a dataset with a recorded budget.
            source: the new source: a key printed by the ledger, or a path (relative to the current
                directory) or URL, normalised as :func:`~safesynth.privacy.source_identity.source_identity`
                does (a key is its own normal form).

        Raises:
            SourceMismatchError: another dataset is bound to that source (rebind it first).
            LedgerError: no budget is recorded for ``dataset``.
        """
        identity = source_identity(source)

        def body(conn: Connection) -> None:
            self._lock_dataset(conn, dataset)
            holder = conn.execute(select(_datasets.c.dataset).where(
                _datasets.c.source_key == identity.key, _datasets.c.dataset != dataset)).scalars().first()
            if holder is not None:
                raise SourceMismatchError(
                    f"`--source-key` ({identity.key}) must not be bound to another dataset: it is the source of "
                    f"dataset `{holder}`; rebind `{holder}` first")
            conn.execute(update(_datasets).where(_datasets.c.dataset == dataset).values(
                source_key=identity.key, source_inode=identity.inode))

        self._run(body, what="rebinding the source")
        log.warning("ledger: dataset %s bound to source %s by the operator", dataset, identity.key)
        return self.summary(dataset)

    # Reading ----------------------------------------------------------------------------------

    def already_published(self, dataset: str, release_id: str, spec_digest: str) -> ReleaseRecord | None:
        """The published attempt of ``release_id``, or ``None``; call before :meth:`reserve`.

        Raises:
            ReleaseIdConflictError: ``release_id`` was used for a different spec digest (exit 2).
        """
        records = self.find(dataset, release_id)
        check_digest([{"status": r.status, "spec_digest": r.spec_digest, "dataset": dataset}
                       for r in records], release_id, spec_digest)
        return next((r for r in records if r.status == "published"), None)

    def find(self, dataset: str, release_id: str) -> list[ReleaseRecord]:
        """Every attempt of ``release_id`` on ``dataset``, oldest first (empty if none)."""
        return self._run(lambda conn: [record_of(r) for r in self._rows(conn, dataset, release_id)],
                         what="reading")

    def datasets(self) -> list[str]:
        return self._run(lambda conn: list(conn.execute(select(_datasets.c.dataset)
                                                        .order_by(_datasets.c.dataset)).scalars()),
                         what="reading")

    def summary(self, dataset: str) -> BudgetSummary:
        """The dataset's lifetime budget, spends and remaining budget (what :meth:`reserve` admits against).

        Raises:
            LedgerError: no release was ever reserved for ``dataset``.
        """

        def body(conn: Connection) -> tuple[RowMapping, list[RowMapping]]:
            stored = conn.execute(select(*self._dataset_columns).where(_datasets.c.dataset == dataset)
                                  ).mappings().one_or_none()
            if stored is None:
                raise LedgerError(f"no budget recorded for dataset `{dataset}`")
            return stored, self._rows(conn, dataset)

        stored, rows = self._run(body, what="reading")
        budget = Budget.of(stored, rows)
        composed = composed_epsilon(rows, lifetime_delta=budget.lifetime_delta)
        if budget.spent_delta <= budget.lifetime_delta:
            composed = min(composed, budget.spent_epsilon)
        return BudgetSummary(
            dataset=dataset, lifetime_epsilon=budget.lifetime_epsilon, lifetime_delta=budget.lifetime_delta,
            spent_epsilon_basic=budget.spent_epsilon, spent_delta_basic=budget.spent_delta,
            spent_epsilon_composed=composed, remaining_epsilon=budget.remaining_epsilon,
            remaining_delta=budget.remaining_delta, releases=tuple(record_of(r) for r in rows),
            source_key=stored.get("source_key"),
        )


# ----------------------------------------------------------------------------------------- helpers


def _prepare(engine: Engine, *, create: bool) -> bool:
    with engine.begin() as conn:
        return store.prepare_schema(conn, create=create)


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return f"{exc.__class__.__name__}: {orig}" if orig is not None else exc.__class__.__name__
