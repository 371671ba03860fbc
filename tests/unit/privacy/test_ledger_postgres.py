"""The ledger on PostgreSQL: the same guarantees as on SQLite, through row locks and ALTER TABLE.

The session fixture ``postgres_url`` (tests/conftest.py) starts a real server with ``initdb`` + ``pg_ctl``
unless ``SAFESYNTH_TEST_POSTGRES_URL`` names one (a URL whose user may create databases, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``). Each test gets a fresh database, dropped
afterwards (``pg_url``, tests/unit/privacy/conftest.py).
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from safesynth.errors import ReleaseIdConflictError, ReleaseInProgressError
from safesynth.privacy.ledger import Ledger, check_ledger
from tests.unit.privacy import _ledger_workers as workers
from tests.unit.privacy._ledger_helpers import process_context, reserve


def test_reserve_commit_and_release_id_rules_on_postgresql(pg_url):
    check_ledger(pg_url)
    with Ledger.open(pg_url) as ledger:
        first = reserve(ledger, "r1", epsilon=1.0)
        with pytest.raises(ReleaseInProgressError):
            reserve(ledger, "r1")
        ledger.mark_data_read(first)
        ledger.commit(first, status="failed", spends=[])
        ledger.commit(first, status="failed", spends=[])  # idempotent
        with pytest.raises(ReleaseIdConflictError):
            reserve(ledger, "r1", digest="other")
        assert ledger.summary("adult").spent_epsilon_basic == 1.0  # failed after reading: the plan at least


def isolation_seen_by_reserve(ledger, monkeypatch) -> list[str]:
    """Record ``SHOW transaction_isolation`` inside each reservation's transaction, once the row is locked."""
    seen: list[str] = []
    lock = Ledger._lock_dataset

    def lock_and_look(self, conn, dataset):
        row = lock(self, conn, dataset)
        seen.append(conn.exec_driver_sql("SHOW transaction_isolation").scalar_one())
        return row

    monkeypatch.setattr(Ledger, "_lock_dataset", lock_and_look)
    return seen


def test_reservations_run_at_read_committed_as_the_ledger_states(pg_url, monkeypatch):
    with Ledger.open(pg_url) as ledger:
        seen = isolation_seen_by_reserve(ledger, monkeypatch)
        reserve(ledger, "r1")
    assert seen == ["read committed"]


def test_a_server_default_of_repeatable_read_does_not_change_the_ledgers_isolation(pg_url, monkeypatch):
    # Under REPEATABLE READ the spends would be read from a snapshot taken before the row lock was granted.
    database = make_url(pg_url).database
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {database} SET default_transaction_isolation TO 'repeatable read'"))
    admin.dispose()
    with create_engine(pg_url).connect() as conn:  # the setting is live for a plain connection
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar_one() == "repeatable read"
    with Ledger.open(pg_url) as ledger:
        seen = isolation_seen_by_reserve(ledger, monkeypatch)
        first = reserve(ledger, "r1")
        ledger.mark_data_read(first)
        reserve(ledger, "r2")
    assert seen == ["read committed"] * 3


def test_an_older_postgresql_ledger_gets_the_owner_column(pg_url):
    with Ledger.open(pg_url) as ledger:
        reserve(ledger, "r1")
        with ledger._engine.begin() as conn:
            conn.execute(text("ALTER TABLE safesynth_budget_releases DROP COLUMN owner"))
    with Ledger.open(pg_url) as ledger:
        assert ledger.abandon("adult", "r1")[0].status == "cancelled"
        assert reserve(ledger, "r1").attempt == 2


@pytest.mark.slow
def test_six_processes_starting_the_same_release_on_postgresql(pg_url):
    Ledger.open(pg_url).close()
    ctx = process_context()
    start, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=workers.reserve_same_release, args=(pg_url, start, results, done)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        done.set()
        for p in procs:
            p.join(timeout=60)
    assert sorted(str(o[1]) for o in outcomes) == ["1"] + ["ReleaseInProgressError"] * 5
    with Ledger.open(pg_url) as ledger:
        assert [r.status for r in ledger.find("race", "r1")] == ["reserved"]


@pytest.mark.slow
def test_commit_retries_through_a_held_row_lock_on_postgresql(pg_url):
    with Ledger.open(pg_url, lock_timeout=0.1) as ledger:
        reservation = reserve(ledger, "r1")
        ledger.mark_data_read(reservation)
        ctx = process_context()
        locked = ctx.Event()
        proc = ctx.Process(target=workers.hold_dataset_row_lock, args=(pg_url, "adult", locked, 2.0))
        proc.start()
        assert locked.wait(timeout=60)
        started = time.monotonic()
        ledger.commit(reservation, status="published")
        assert time.monotonic() - started >= 1.0
        proc.join(timeout=60)
        assert ledger.find("adult", "r1")[0].status == "published"


def test_source_bindings_and_their_migration_on_postgresql(pg_url, tmp_path):
    from safesynth.errors import SourceMismatchError
    from safesynth.privacy.source_identity import source_identity

    data = tmp_path / "data.csv"
    data.write_text("x\n1\n")
    source = source_identity(str(data))
    with Ledger.open(pg_url) as ledger:
        reserve(ledger, "r1")
        with ledger._engine.begin() as conn:  # the 0.2 schema
            conn.execute(text("DROP INDEX uq_safesynth_dataset_source_key"))
            conn.execute(text("ALTER TABLE safesynth_budget_datasets DROP COLUMN source_key"))
            conn.execute(text("ALTER TABLE safesynth_budget_datasets DROP COLUMN source_inode"))
    with Ledger.open(pg_url) as ledger:
        reserve(ledger, "r2", source=source)
        with pytest.raises(SourceMismatchError, match="must be `adult`"):
            reserve(ledger, "r1", dataset="renamed", source=source)
        assert ledger.summary("adult").source_key == source.key
