"""Release ids in the ledger: one spec per id, one attempt in flight, stale attempts, published ids."""

from __future__ import annotations

import dataclasses
import signal
import sqlite3

import pytest
from sqlalchemy import update

from safesynth.errors import (
    AlreadyPublishedError,
    LedgerError,
    ReleaseIdConflictError,
    ReleaseInProgressError,
)
from safesynth.owner import Owner
from safesynth.privacy.ledger import Ledger
from safesynth.privacy.ledger_store import releases
from tests.unit.privacy import _ledger_workers as workers
from tests.unit.privacy._ledger_helpers import process_context, reserve


def set_owner(ledger, reservation, owner_json):
    with ledger._engine.begin() as conn:
        conn.execute(update(releases).where(releases.c.id == reservation.id).values(owner=owner_json))


def elsewhere() -> str:
    return dataclasses.replace(Owner.current(), host="another-host.example").to_json()


# ------------------------------------------------------------------------------------------ digests


def test_a_release_id_reused_for_a_different_spec_is_refused(ledger):
    first = reserve(ledger, "r1", digest="a" * 64)
    ledger.mark_data_read(first)
    ledger.commit(first, status="failed")
    with pytest.raises(ReleaseIdConflictError) as info:
        reserve(ledger, "r1", digest="b" * 64)
    assert info.value.exit_code == 2
    assert str(info.value) == ("release id `r1` of dataset `adult` was already used for a different spec (digest "
                               "aaaaaaaaaaaa, this spec bbbbbbbbbbbb); choose a new release id")
    with pytest.raises(ReleaseIdConflictError):
        ledger.already_published("adult", "r1", "b" * 64)


def test_a_cancelled_attempt_does_not_bind_its_release_id(ledger):
    ledger.cancel(reserve(ledger, "r1", digest="a"))
    assert reserve(ledger, "r1", digest="b").attempt == 2


def test_already_published_returns_the_record_and_reserve_refuses_a_new_attempt(ledger):
    assert ledger.already_published("adult", "r1", "digest") is None
    first = reserve(ledger, "r1")
    ledger.mark_data_read(first)
    ledger.commit(first, status="published")
    record = ledger.already_published("adult", "r1", "digest")
    assert record is not None and (record.attempt, record.status) == (1, "published")
    with pytest.raises(AlreadyPublishedError, match="already published") as info:
        reserve(ledger, "r1")
    assert info.value.exit_code == 0


# ---------------------------------------------------------------------------------------- in flight


def test_a_second_attempt_while_the_first_is_in_flight_is_refused(ledger):
    reserve(ledger, "r1")  # owned by this (live) process
    with pytest.raises(ReleaseInProgressError) as info:
        reserve(ledger, "r1")
    assert "already in flight (attempt 1, pid" in str(info.value)
    assert "`safesynth budget abandon adult r1`" in str(info.value)
    assert info.value.exit_code == 1
    with pytest.raises(LedgerError, match="still running"):
        ledger.abandon("adult", "r1")


@pytest.mark.parametrize("read", [False, True])
def test_an_attempt_on_another_host_is_refused_until_abandoned(ledger, read):
    first = reserve(ledger, "r1", epsilon=1.0)
    if read:
        ledger.mark_data_read(first)
    set_owner(ledger, first, elsewhere())
    with pytest.raises(ReleaseInProgressError, match="on another-host.example"):
        reserve(ledger, "r1")
    [closed] = ledger.abandon("adult", "r1")
    assert (closed.status, closed.epsilon) == (("failed", 1.0) if read else ("cancelled", 0.0))
    assert reserve(ledger, "r1").attempt == 2
    with pytest.raises(LedgerError, match="has no attempt in flight"):
        ledger.abandon("adult", "nope")


def test_a_row_without_an_owner_is_never_presumed_dead(ledger):
    first = reserve(ledger, "r1")
    set_owner(ledger, first, None)  # written before owners were recorded
    with pytest.raises(ReleaseInProgressError, match="an unrecorded process"):
        reserve(ledger, "r1")


def test_owner_state_is_dead_only_when_provable():
    me = Owner.current()
    assert me.state() == "alive"
    assert dataclasses.replace(me, host="another-host.example").state() == "unknown"
    assert dataclasses.replace(me, pidns="pid:[1]").state() == "unknown"
    if me.start is not None:  # Linux: a recycled pid has another start time
        assert dataclasses.replace(me, start=me.start + 1).state() == "dead"
    assert Owner.from_json(me.to_json()) == me
    assert Owner.from_json("not json") is None


@pytest.mark.slow
@pytest.mark.parametrize("read", [True, False])
def test_a_stale_attempt_of_a_dead_local_process_is_closed_and_the_new_one_proceeds(url, read):
    ctx = process_context()
    proc = ctx.Process(target=workers.reserve_read_and_die, args=(url, read))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    with Ledger.open(url) as ledger:
        again = ledger.reserve(dataset="crash", release_id="doomed", spec_digest="d", epsilon=0.4, delta=1e-6,
                               accountant="rdp", **workers.LIFETIME)
        stale, new = ledger.find("crash", "doomed")
        assert again.attempt == new.attempt == 2 and new.status == "reserved"
        # Read data: failed at its plan, never refunded. Not read: cancelled, refunded.
        assert (stale.status, stale.epsilon) == (("failed", 0.4) if read else ("cancelled", 0.0))
        assert ledger.summary("crash").spent_epsilon_basic == pytest.approx(0.8 if read else 0.4)


@pytest.mark.slow
def test_six_processes_starting_the_same_release_get_exactly_one_reservation(url):
    Ledger.open(url).close()
    ctx = process_context()
    start, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=workers.reserve_same_release, args=(url, start, results, done)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        done.set()
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 6
    granted = [o for o in outcomes if o[0] == "granted"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert granted == [("granted", 1, "")]
    assert {o[1] for o in refused} == {"ReleaseInProgressError"} and len(refused) == 5
    assert all("\n" not in o[2] and "safesynth budget abandon race r1" in o[2] for o in refused)
    with Ledger.open(url) as ledger:
        [record] = ledger.find("race", "r1")
        assert record.status == "reserved"
        assert ledger.summary("race").spent_epsilon_basic == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------- migration


def test_an_older_ledger_gets_the_owner_column_and_read_only_opens_change_nothing(tmp_path):
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    with Ledger.open(url) as ledger:
        reserve(ledger, "r1")
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE safesynth_budget_releases DROP COLUMN owner")  # the 0.1 schema
    book = Ledger.open_existing(url)
    assert book is not None
    with book:
        assert [r.owner for r in book.summary("adult").releases] == [None]
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(safesynth_budget_releases)")]
    assert "owner" not in columns
    with Ledger.open(url) as ledger:
        with pytest.raises(ReleaseInProgressError, match="unrecorded process"):
            reserve(ledger, "r1")
        ledger.abandon("adult", "r1")
        assert reserve(ledger, "r1").attempt == 2
        assert ledger.find("adult", "r1")[1].owner == Owner.current().describe()
