"""Settling a release in the ledger: what it is charged, idempotent commits, retries through a held lock."""

from __future__ import annotations

import logging
import math
import time

import pytest
from dp_accounting import dp_event
from sqlalchemy.exc import IntegrityError, OperationalError

from safesynth.errors import BudgetExceededError, InternalError, LedgerError
from safesynth.privacy.accountant import StageSpend
from safesynth.privacy.ledger import Ledger
from safesynth.privacy.ledger_store import is_transient
from tests.unit.privacy import _ledger_workers as workers
from tests.unit.privacy._ledger_helpers import process_context, reserve


def laplace_spend(stage: str, epsilon: float) -> StageSpend:
    return StageSpend(stage=stage, event=dp_event.LaplaceDpEvent(noise_multiplier=1.0 / epsilon), epsilon=epsilon,
                      delta=0.0, mechanism="laplace", secure_noise=True)


def record(ledger, release_id):
    [only] = ledger.find("adult", release_id)
    return only


# ------------------------------------------------------------------------------------------ charges


@pytest.mark.parametrize("status", ["failed", "blocked"])
def test_a_release_that_read_data_and_did_not_publish_is_charged_at_least_its_plan(ledger, status):
    reservation = reserve(ledger, "r1", epsilon=1.0, delta=2e-6)
    ledger.mark_data_read(reservation)
    ledger.commit(reservation, status=status, spends=[laplace_spend("discovery", 0.25)])  # died after a stage
    stored = record(ledger, "r1")
    assert (stored.status, stored.epsilon, stored.delta) == (status, 1.0, 2e-6)
    assert [s["stage"] for s in stored.stages] == ["discovery"]  # the partial spends are kept for audit
    assert ledger.summary("adult").spent_epsilon_basic == 1.0


def test_a_published_release_is_charged_what_its_account_says(ledger):
    reservation = reserve(ledger, "r1", epsilon=1.0, delta=2e-6)
    ledger.mark_data_read(reservation)
    ledger.commit(reservation, status="published", spends=[laplace_spend("generator", 0.25)])
    assert (record(ledger, "r1").epsilon, record(ledger, "r1").delta) == (0.25, 2e-6)


def test_a_release_that_never_read_data_is_charged_only_its_spends(ledger):
    reservation = reserve(ledger, "r1", epsilon=1.0)
    ledger.commit(reservation, status="failed", spends=[])
    assert record(ledger, "r1").epsilon == 0.0


def test_a_spend_above_the_plan_is_recorded_first_then_refused(ledger):
    reservation = reserve(ledger, "r1", epsilon=0.5)
    ledger.mark_data_read(reservation)
    with pytest.raises(InternalError, match=r"spent \(epsilon 0.75, .*more than its plan \(0.5, .*recorded as spent"):
        ledger.commit(reservation, status="published", spends=[laplace_spend("generator", 0.75)])
    assert (record(ledger, "r1").status, record(ledger, "r1").epsilon) == ("published", 0.75)
    with pytest.raises(InternalError):  # a retry changes nothing and still refuses
        ledger.commit(reservation, status="published", spends=[laplace_spend("generator", 0.75)])
    assert ledger.summary("adult").spent_epsilon_basic == 0.75


def test_float_rounding_of_stage_shares_is_not_an_overspend(ledger):
    reservation = reserve(ledger, "r1", epsilon=0.3)
    ledger.mark_data_read(reservation)
    shares = [laplace_spend("discovery", 0.3 * 0.1), laplace_spend("generator", 0.3 * 0.9)]
    ledger.commit(reservation, status="published", spends=shares)
    assert record(ledger, "r1").epsilon == pytest.approx(0.3, rel=1e-12)


# ------------------------------------------------------------------------------------- idempotence


def test_repeating_a_commit_is_a_no_op_and_a_different_status_is_refused(ledger):
    reservation = reserve(ledger, "r1")
    ledger.mark_data_read(reservation)
    ledger.mark_data_read(reservation)
    spends = [laplace_spend("generator", 0.5)]
    ledger.commit(reservation, status="published", spends=spends)
    ledger.commit(reservation, status="published", spends=spends)  # a retry after an ambiguous failure
    assert record(ledger, "r1").epsilon == 0.5
    with pytest.raises(LedgerError, match=r"cannot commit release `r1` \(attempt 1\): it is already published"):
        ledger.commit(reservation, status="failed")
    early = reserve(ledger, "r2")
    ledger.cancel(early)
    ledger.cancel(early)


# ----------------------------------------------------------------------------------------- retries


def hold_lock(url: str, seconds: float):
    ctx = process_context()
    locked = ctx.Event()
    proc = ctx.Process(target=workers.hold_exclusive_lock, args=(url.removeprefix("sqlite:///"), locked, seconds))
    proc.start()
    assert locked.wait(timeout=60)
    return proc


@pytest.mark.slow
def test_commit_retries_while_another_connection_holds_the_lock(url, caplog):
    with Ledger.open(url, lock_timeout=0.1) as ledger:
        reservation = reserve(ledger, "r1")
        ledger.mark_data_read(reservation)
        proc = hold_lock(url, 2.0)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="safesynth.privacy.ledger_store"):
            ledger.commit(reservation, status="published", spends=[laplace_spend("generator", 0.5)])
        waited = time.monotonic() - started
        proc.join(timeout=60)
        assert record(ledger, "r1").status == "published"
    assert waited >= 1.0
    assert any("budget ledger busy while committing" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_commit_gives_up_after_retry_for_and_can_be_retried_later(url):
    with Ledger.open(url, lock_timeout=0.1, retry_for=0.3) as ledger:
        reservation = reserve(ledger, "r1")
        ledger.mark_data_read(reservation)
        proc = hold_lock(url, 2.0)
        with pytest.raises(LedgerError, match="database is locked"):
            ledger.commit(reservation, status="published")
        proc.join(timeout=60)
        ledger.commit(reservation, status="published")
        assert record(ledger, "r1").status == "published"


def test_transient_errors_are_locks_conflicts_and_dropped_connections():
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__("server said no")
            self.sqlstate = sqlstate

    assert is_transient(OperationalError("COMMIT", {}, Exception("database is locked")))
    assert is_transient(OperationalError("SELECT", {}, PgError("40001")))  # serialization failure
    assert is_transient(OperationalError("SELECT", {}, PgError("08006")))  # connection failure
    assert is_transient(OperationalError("SELECT", {}, Exception("gone"), connection_invalidated=True))
    assert not is_transient(OperationalError("SELECT", {}, PgError("42P01")))  # undefined table
    assert not is_transient(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")))
    assert not is_transient(ValueError("database is locked"))


# ------------------------------------------------------------------------------ show = admission


def test_remaining_in_the_summary_is_exactly_what_reserve_admits(ledger):
    kwargs = {"lifetime_epsilon": 1.0, "lifetime_delta": 1e-5}
    for i, epsilon in enumerate((0.1, 0.2, 0.07)):
        reservation = reserve(ledger, f"r{i}", epsilon=epsilon, delta=3e-7, **kwargs)
        ledger.mark_data_read(reservation)
        ledger.commit(reservation, status="failed")
    summary = ledger.summary("adult")
    assert summary.remaining_epsilon == pytest.approx(0.63)
    with pytest.raises(BudgetExceededError) as info:
        reserve(ledger, "over", epsilon=math.nextafter(summary.remaining_epsilon, 1.0), delta=0.0, **kwargs)
    assert info.value.remaining == summary.remaining_epsilon
    with pytest.raises(BudgetExceededError) as info:
        reserve(ledger, "over-delta", epsilon=0.1, delta=math.nextafter(summary.remaining_delta, 1.0), **kwargs)
    assert info.value.remaining == summary.remaining_delta
    reserve(ledger, "exact", epsilon=summary.remaining_epsilon, delta=summary.remaining_delta, **kwargs)
    after = ledger.summary("adult")
    # What is left is below one ulp of the lifetime: the exact sum of the doubles admitted is <= 1.
    assert after.remaining_epsilon < 1e-15 and after.remaining_delta < 1e-20
    assert math.fsum([r.epsilon for r in after.releases] + [-1.0]) <= 0.0
