"""Child-process bodies for the ledger tests (importable by ``multiprocessing`` spawn)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

from sqlalchemy import event

from safesynth.errors import BudgetExceededError, SafeSynthError
from safesynth.privacy.ledger import Ledger

LIFETIME = {"lifetime_epsilon": 1.0, "lifetime_delta": 1e-5}


def reserve_many(url: str, name: str, tries: int, epsilon: float, start, results) -> None:
    """Wait for the start signal, then try ``tries`` reservations; report (granted, refused)."""
    ledger = Ledger.open(url)
    # Widen the race window between reading the spent total and inserting the new row: without the
    # ledger's lock, both processes would read the same total and overspend.
    event.listen(ledger._engine, "before_cursor_execute", _slow_insert)
    start.wait(timeout=60)
    granted = refused = 0
    for i in range(tries):
        try:
            ledger.reserve(dataset="shared", release_id=f"{name}-{i}", spec_digest="d", epsilon=epsilon,
                           delta=1e-7, accountant="rdp", **LIFETIME)
            granted += 1
        except BudgetExceededError:
            refused += 1
    results.put((name, granted, refused))
    ledger.close()


def reserve_read_and_die(url: str, read: bool) -> None:
    """Reserve, optionally mark data read, then die without cleaning up (SIGKILL: no finally, no atexit)."""
    ledger = Ledger.open(url)
    reservation = ledger.reserve(dataset="crash", release_id="doomed", spec_digest="d", epsilon=0.4, delta=1e-6,
                                 accountant="rdp", **LIFETIME)
    if read:
        ledger.mark_data_read(reservation)
    os.kill(os.getpid(), signal.SIGKILL)


def reserve_same_release(url: str, start, results, done) -> None:
    """Wait for the start signal, try to reserve release `r1` of `race`; stay alive until ``done``.

    Reports ``("granted", attempt)`` or ``("refused", error class, message)``. Staying alive matters: a
    winner that exited would be a dead owner, which the others may rightly close as stale.
    """
    ledger = Ledger.open(url)
    event.listen(ledger._engine, "before_cursor_execute", _slow_insert)  # widen the race window
    start.wait(timeout=60)
    try:
        reservation = ledger.reserve(dataset="race", release_id="r1", spec_digest="d", epsilon=0.1, delta=1e-7,
                                     accountant="rdp", **LIFETIME)
        results.put(("granted", reservation.attempt, ""))
    except SafeSynthError as exc:
        results.put(("refused", type(exc).__name__, str(exc)))
    done.wait(timeout=120)
    ledger.close()


def hold_exclusive_lock(path: str, locked, seconds: float) -> None:
    """Hold SQLite's exclusive lock on ``path`` (no reader or writer gets in) for ``seconds``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def hold_dataset_row_lock(url: str, dataset: str, locked, seconds: float) -> None:
    """Hold the row lock of ``dataset`` (``SELECT ... FOR UPDATE``, PostgreSQL) for ``seconds``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SELECT 1 FROM safesynth_budget_datasets WHERE dataset = :d FOR UPDATE"), {"d": dataset})
        locked.set()
        time.sleep(seconds)
    engine.dispose()


def _slow_insert(conn, cursor, statement, parameters, context, executemany) -> None:
    if statement.startswith("INSERT INTO safesynth_budget_releases"):
        time.sleep(0.05)
