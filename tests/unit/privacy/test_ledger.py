"""The budget ledger: atomic reservations across processes, fail-closed crashes, refunds, summaries."""

from __future__ import annotations

import signal

import pytest

from safesynth.errors import BudgetExceededError, LedgerError, LifetimeMismatchError, PrivacyError, SpecError
from safesynth.privacy.discovery import dp_row_count
from safesynth.privacy.ledger import Ledger, default_url
from safesynth.privacy.noise import SeededNoise
from tests.unit.privacy import _ledger_workers as workers
from tests.unit.privacy._ledger_helpers import gaussian_spend, process_context, reserve

# ------------------------------------------------------------------------------------- reserving


def test_reservation_that_does_not_fit_is_refused_with_requested_and_remaining(ledger):
    reserve(ledger, "r1", epsilon=2.0)
    with pytest.raises(BudgetExceededError) as info:
        reserve(ledger, "r2", epsilon=1.5)
    message = str(info.value)
    assert "`adult`" in message
    assert "epsilon 1.5 but only 1 remains" in message
    assert info.value.requested == 1.5
    assert info.value.remaining == pytest.approx(1.0)
    assert info.value.exit_code == 3


def test_lifetime_delta_is_enforced_too(ledger):
    reserve(ledger, "r1", epsilon=0.5, delta=8e-6)
    with pytest.raises(BudgetExceededError, match="needs delta"):
        reserve(ledger, "r2", epsilon=0.5, delta=3e-6)


def test_in_flight_reservations_count_against_the_budget(ledger):
    reserve(ledger, "r1", epsilon=1.5)  # not committed, data not read: still counted
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "r2", epsilon=1.6)
    reserve(ledger, "r3", epsilon=1.5)  # exactly fills the lifetime budget
    assert ledger.summary("adult").remaining_epsilon == 0.0


def test_a_changed_lifetime_in_the_spec_is_refused_until_the_operator_sets_it(ledger):
    reserve(ledger, "r1", epsilon=2.0)
    for lifetime in (10.0, 2.5):  # raising and lowering alike
        with pytest.raises(LifetimeMismatchError) as info:
            reserve(ledger, "r2", epsilon=2.0, lifetime_epsilon=lifetime)
        assert info.value.exit_code == 2
        assert f"`privacy.lifetime_epsilon` ({lifetime}) must equal the recorded 3.0" in str(info.value)
        assert f"safesynth budget set-lifetime adult --epsilon {lifetime}" in str(info.value)
    with pytest.raises(LifetimeMismatchError, match="lifetime_delta"):
        reserve(ledger, "r2", epsilon=0.5, lifetime_delta=2e-5)
    assert ledger.summary("adult").lifetime_epsilon == 3.0
    ledger.set_lifetime("adult", epsilon=10.0)
    reserve(ledger, "r2", epsilon=2.0, lifetime_epsilon=10.0)
    assert ledger.summary("adult").lifetime_epsilon == 10.0


def test_set_lifetime_refuses_to_go_below_what_is_spent(ledger):
    reserve(ledger, "r1", epsilon=2.0, delta=4e-6)  # in flight: counted
    with pytest.raises(PrivacyError, match=r"lifetime `epsilon` \(1.5\) must be >= 2"):
        ledger.set_lifetime("adult", epsilon=1.5)
    with pytest.raises(PrivacyError, match="lifetime `delta`"):
        ledger.set_lifetime("adult", epsilon=2.0, delta=1e-6)
    summary = ledger.set_lifetime("adult", epsilon=2.0, delta=4e-6)
    assert (summary.remaining_epsilon, summary.remaining_delta) == (0.0, 0.0)
    with pytest.raises(ValueError, match="`delta` is required"):
        ledger.set_lifetime("new", epsilon=1.0)
    assert ledger.set_lifetime("new", epsilon=1.0, delta=1e-6).lifetime_delta == 1e-6


def test_an_undeclared_lifetime_delta_never_conflicts(ledger):
    reserve(ledger, "r1", epsilon=0.5)
    ledger.reserve(dataset="adult", release_id="r2", spec_digest="digest", epsilon=0.5, delta=1e-6,
                   accountant="rdp", lifetime_epsilon=3.0, lifetime_delta=7e-6, lifetime_delta_declared=False)
    assert ledger.summary("adult").lifetime_delta == 1e-5


def test_retries_of_a_release_are_numbered_attempts(ledger):
    first = reserve(ledger, "r1", epsilon=0.5)
    ledger.cancel(first)
    second = reserve(ledger, "r1", epsilon=0.5)
    assert (first.attempt, second.attempt) == (1, 2)
    assert [(r.attempt, r.status) for r in ledger.find("adult", "r1")] == [(1, "cancelled"), (2, "reserved")]
    assert ledger.find("adult", "nope") == []


@pytest.mark.slow
def test_processes_reserving_different_releases_concurrently_never_overspend(any_url):
    """Four processes, three release ids each, one dataset: twelve claims of 0.15 on a lifetime of 1.0."""
    if any_url.startswith("postgresql"):
        hostile_isolation_default(any_url)
    Ledger.open(any_url).close()  # create the tables up front
    ctx = process_context()
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=workers.reserve_many, args=(any_url, name, 3, 0.15, start, results))
             for name in ("a", "b", "c", "d")]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(g for _, g, _ in outcomes) == 6  # exactly as many as fit: floor(1.0 / 0.15)
    assert sum(r for _, _, r in outcomes) == 6
    with Ledger.open(any_url) as ledger:
        summary = ledger.summary("shared")
    assert summary.spent_epsilon_basic <= 1.0
    assert len(summary.releases) == 6 and len({r.release_id for r in summary.releases}) == 6


def hostile_isolation_default(pg_url: str) -> None:
    """Make REPEATABLE READ the database's default: the ledger must not depend on the server's setting."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"ALTER DATABASE {make_url(pg_url).database} SET default_transaction_isolation "
                          "TO 'repeatable read'"))
    admin.dispose()


# ---------------------------------------------------------------------------------- crash and refund


@pytest.mark.slow
def test_process_killed_after_reading_data_stays_counted_as_spent(url):
    ctx = process_context()
    proc = ctx.Process(target=workers.reserve_read_and_die, args=(url, True))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    with Ledger.open(url) as ledger:
        [record] = ledger.find("crash", "doomed")
        assert (record.status, record.data_read, record.epsilon) == ("reserved", True, 0.4)
        summary = ledger.summary("crash")
        assert summary.spent_epsilon_basic == pytest.approx(0.4)
        assert summary.remaining_epsilon == pytest.approx(0.6)
        with pytest.raises(LedgerError, match="cannot be refunded"):
            ledger.cancel(record.reservation())
        with pytest.raises(BudgetExceededError):
            ledger.reserve(dataset="crash", release_id="next", spec_digest="d", epsilon=0.7, delta=1e-6,
                           accountant="rdp", **workers.LIFETIME)


def test_cancel_refunds_only_before_data_is_read(ledger):
    early = reserve(ledger, "early", epsilon=1.0)
    ledger.cancel(early)
    assert ledger.summary("adult").spent_epsilon_basic == 0.0
    late = reserve(ledger, "late", epsilon=1.0)
    ledger.mark_data_read(late)
    with pytest.raises(LedgerError, match="already read private data"):
        ledger.cancel(late)
    assert ledger.summary("adult").spent_epsilon_basic == 1.0


def test_a_closed_reservation_cannot_be_committed_or_cancelled_again(ledger):
    reservation = reserve(ledger, "r1")
    ledger.mark_data_read(reservation)
    ledger.commit(reservation, status="published")
    with pytest.raises(LedgerError, match="already published"):
        ledger.commit(reservation, status="failed")
    with pytest.raises(LedgerError, match="already published"):
        ledger.cancel(reservation)
    with pytest.raises(ValueError, match="status"):
        ledger.commit(reserve(ledger, "r2"), status="done")


# ----------------------------------------------------------------------------------------- commits


def test_commit_without_spends_keeps_the_planned_amount(ledger):
    reservation = reserve(ledger, "r1", epsilon=1.2, delta=2e-6)
    ledger.mark_data_read(reservation)
    ledger.commit(reservation, status="failed")
    [record] = ledger.find("adult", "r1")
    assert (record.status, record.epsilon, record.delta) == ("failed", 1.2, 2e-6)


def test_commit_with_spends_counts_what_was_actually_spent(ledger):
    reservation = reserve(ledger, "r1", epsilon=1.0, delta=1e-6)
    ledger.mark_data_read(reservation)
    _, rows = dp_row_count(1000, epsilon=0.25, noise=SeededNoise(1), stage="discovery.rows")
    ledger.commit(reservation, status="published", spends=[rows, gaussian_spend("generator", 0.5, 1e-6)])
    [record] = ledger.find("adult", "r1")
    assert record.status == "published"
    assert record.epsilon <= 0.75 + 1e-12  # the release account's epsilon: at most the basic sum
    assert record.delta == 1e-6
    assert [s["stage"] for s in record.stages] == ["discovery.rows", "generator"]
    assert record.stages[0]["event"]["type"] == "discrete_laplace"


def test_commit_with_no_spends_refunds_everything(ledger):
    reservation = reserve(ledger, "r1", epsilon=1.0)
    ledger.commit(reservation, status="blocked", spends=[])
    assert ledger.summary("adult").spent_epsilon_basic == 0.0


# ----------------------------------------------------------------------------------------- summary


def test_summary_composed_is_at_most_summed_and_remaining_is_conservative(ledger):
    for i in range(4):
        reservation = reserve(ledger, f"r{i}", epsilon=0.7, delta=2e-6)
        ledger.mark_data_read(reservation)
        ledger.commit(reservation, status="published",
                      spends=[gaussian_spend("generator", 0.5, 1e-6), gaussian_spend("condition", 0.2, 1e-6)])
    reserve(ledger, "in-flight", epsilon=0.1, delta=1e-7)
    summary = ledger.summary("adult")
    assert summary.spent_epsilon_composed <= summary.spent_epsilon_basic
    assert summary.spent_epsilon_composed < summary.spent_epsilon_basic  # RDP helps for many Gaussians
    assert summary.remaining_epsilon == pytest.approx(3.0 - summary.spent_epsilon_basic)
    assert summary.remaining_delta == pytest.approx(1e-5 - 8.1e-6)
    assert summary.spent_epsilon_basic + summary.remaining_epsilon <= 3.0
    data = summary.to_dict()
    assert [r["release_id"] for r in data["releases"]] == ["r0", "r1", "r2", "r3", "in-flight"]
    assert data["releases"][-1]["status"] == "reserved"


def test_summary_of_unknown_dataset_is_an_error(ledger):
    with pytest.raises(LedgerError, match="no budget recorded for dataset `nope`"):
        ledger.summary("nope")


def test_default_ledger_lives_in_safesynth_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SAFESYNTH_LEDGER_URL", raising=False)
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    with Ledger.open(None) as book:
        reserve(book, "r1", epsilon=0.5)
    assert (tmp_path / "home" / "ledger.db").exists()


def test_unusable_url_is_a_spec_error_without_password(tmp_path):
    with pytest.raises(SpecError) as info:
        Ledger.open("postgresql+nosuchdriver://user:hunter2@localhost/db")
    assert "hunter2" not in str(info.value)
    assert info.value.exit_code == 2
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(SpecError, match="is a directory"):
        Ledger.open(f"sqlite:///{tmp_path / 'a-directory'}")


def test_relative_sqlite_url_in_a_spec_resolves_against_the_spec_directory(tmp_path):
    from safesynth.spec import parse_spec

    spec = parse_spec({
        "dataset": "toy", "source": "toy.csv", "columns": {"x": {"type": "boolean"}},
        "privacy": {"epsilon": 1.0, "lifetime_epsilon": 2.0}, "sampling": {"rows": 10},
        "publish": {"target": "out"}, "ledger": {"url": "sqlite:///state/ledger.db"},
    }, base_dir=tmp_path)
    with Ledger.for_spec(spec) as book:
        assert book.url == f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    assert (tmp_path / "state" / "ledger.db").exists()
