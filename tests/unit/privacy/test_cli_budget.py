"""`safesynth budget`: show (table, JSON, missing ledger), set-lifetime, abandon; list and cancel on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import math
import sys

import pytest
from safesynth.flows.cli_budget import budget_app
from sqlalchemy import update
from typer.testing import CliRunner

from safesynth.errors import BudgetExceededError
from safesynth.privacy.ledger import Ledger
from safesynth.privacy.ledger_store import releases

runner = CliRunner()


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        kwargs = {"dataset": "adult", "spec_digest": "d", "delta": 1e-6, "lifetime_epsilon": 5.0,
                  "lifetime_delta": 1e-5, "accountant": "rdp"}
        first = ledger.reserve(release_id="2026-01", epsilon=1.0, **kwargs)
        ledger.mark_data_read(first)
        ledger.commit(first, status="published")
        crashed = ledger.reserve(release_id="2026-02", epsilon=2.0, **kwargs)
        ledger.mark_data_read(crashed)
    return url


def test_show_prints_lifetime_spent_remaining_and_each_release(url):
    result = runner.invoke(budget_app, ["show", "adult", "--ledger", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("lifetime", "remaining", "2026-01", "2026-02", "published", "reserved+data_read"):
        assert text in result.output
    assert "2" in result.output  # remaining epsilon 5 - 1 - 2


def test_show_json_is_the_summary(url):
    result = runner.invoke(budget_app, ["show", "adult", "--ledger", url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["lifetime_epsilon"] == 5.0
    assert data["spent_epsilon_basic"] == 3.0
    assert data["remaining_epsilon"] == 2.0
    assert [(r["release_id"], r["status"], r["data_read"]) for r in data["releases"]] == [
        ("2026-01", "published", True), ("2026-02", "reserved", True)]


def test_show_unknown_dataset_fails_with_one_line(url):
    result = runner.invoke(budget_app, ["show", "nope", "--ledger", url])
    assert result.exit_code == 1
    assert "no budget recorded for dataset `nope`" in result.output
    assert "Traceback" not in result.output


def test_show_labels_what_admits_releases_and_what_is_informational(url):
    result = runner.invoke(budget_app, ["show", "adult", "--ledger-url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "remaining (admits releases)" in result.output
    assert "spent (composed RDP; informational)" in result.output


def test_show_remaining_is_what_reserve_admits(url):
    data = json.loads(runner.invoke(budget_app, ["show", "adult", "--ledger-url", url, "--json"]).output)
    with Ledger.open(url) as ledger:
        kwargs = {"dataset": "adult", "spec_digest": "d", "delta": 0.0, "lifetime_epsilon": 5.0,
                  "lifetime_delta": 1e-5, "accountant": "rdp"}
        with pytest.raises(BudgetExceededError) as info:
            ledger.reserve(release_id="over", epsilon=math.nextafter(data["remaining_epsilon"], 9.0), **kwargs)
        assert info.value.remaining == data["remaining_epsilon"]
        ledger.reserve(release_id="exact", epsilon=data["remaining_epsilon"], **kwargs)


def test_show_on_a_missing_ledger_creates_nothing_and_says_so(tmp_path):
    missing = tmp_path / "nowhere" / "ledger.db"
    result = runner.invoke(budget_app, ["show", "adult", "--ledger-url", f"sqlite:///{missing}"])
    assert result.exit_code == 0, result.output
    assert result.output == f"no budget ledger at sqlite:///{missing}: nothing recorded yet (the first release creates it)\n"
    assert not (tmp_path / "nowhere").exists()
    result = runner.invoke(budget_app, ["show", "adult", "--ledger-url", f"sqlite:///{missing}", "--json"])
    assert json.loads(result.output)["exists"] is False
    assert list(tmp_path.iterdir()) == []


def test_show_uses_the_operator_ledger_url_from_the_environment(url, tmp_path):
    result = runner.invoke(budget_app, ["show", "adult", "--json"], env={"SAFESYNTH_LEDGER_URL": url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lifetime_epsilon"] == 5.0


def test_show_with_a_driver_that_is_not_installed_is_exit_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    result = runner.invoke(budget_app, ["show", "adult", "--ledger-url", "postgresql://u:pw@db/x"])
    assert result.exit_code == 2
    assert "pip install 'safesynth[postgres]'" in result.output and "Traceback" not in result.output


def test_set_lifetime_changes_the_recorded_budget_never_below_the_spend(url):
    result = runner.invoke(budget_app, ["set-lifetime", "adult", "--epsilon", "2.5", "--ledger-url", url])
    assert result.exit_code == 1
    assert "lifetime `epsilon` (2.5) must be >= 3" in result.output
    result = runner.invoke(budget_app, ["set-lifetime", "adult", "--epsilon", "8", "--ledger-url", url])
    assert result.exit_code == 0, result.output
    assert "lifetime epsilon 8, delta 1e-05; remaining epsilon 5" in result.output
    with Ledger.open(url) as ledger:
        ledger.reserve(dataset="adult", release_id="2026-03", spec_digest="d", epsilon=1.0, delta=1e-6,
                       lifetime_epsilon=8.0, lifetime_delta=1e-5, accountant="rdp")
    result = runner.invoke(budget_app, ["set-lifetime", "new", "--epsilon", "1", "--ledger-url", url])
    assert result.exit_code == 2 and "`delta` is required" in result.output


def test_abandon_closes_a_stale_attempt_at_its_plan(url):
    with Ledger.open(url) as ledger:
        [_, crashed] = ledger.summary("adult").releases
        with ledger._engine.begin() as conn:  # its process ran on another host
            conn.execute(update(releases).where(releases.c.id == crashed.id).values(owner=None))
    result = runner.invoke(budget_app, ["abandon", "adult", "2026-02", "--ledger-url", url])
    assert result.exit_code == 0, result.output
    assert "release `2026-02` attempt 1: failed (charged epsilon 2, delta 1e-06)" in result.output
    result = runner.invoke(budget_app, ["abandon", "adult", "2026-02", "--ledger-url", url])
    assert result.exit_code == 1 and "has no attempt in flight" in result.output


# ------------------------------------------------------------------------ list and cancel, both backends


@pytest.fixture(params=["sqlite", "postgresql"])
def teams_url(request, tmp_path):
    """Two datasets on each backend: `adult` with a published, a crashed (data read) and a queued release
    (never read data), both in flight on another host; `census` with one published release."""
    url = f"sqlite:///{tmp_path / 'teams.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    kwargs = {"spec_digest": "d", "delta": 1e-6, "lifetime_delta": 1e-5, "accountant": "rdp"}
    with Ledger.open(url) as ledger:
        first = ledger.reserve(dataset="adult", release_id="2026-01", epsilon=1.0, lifetime_epsilon=5.0, **kwargs)
        ledger.mark_data_read(first)
        ledger.commit(first, status="published")
        crashed = ledger.reserve(dataset="adult", release_id="2026-02", epsilon=2.0, lifetime_epsilon=5.0, **kwargs)
        ledger.mark_data_read(crashed)
        queued = ledger.reserve(dataset="adult", release_id="2026-03", epsilon=0.5, lifetime_epsilon=5.0, **kwargs)
        census = ledger.reserve(dataset="census", release_id="c1", epsilon=0.25, lifetime_epsilon=1.0, **kwargs)
        ledger.mark_data_read(census)
        ledger.commit(census, status="published")
        with ledger._engine.begin() as conn:  # their processes ran on another host
            conn.execute(update(releases).where(releases.c.id.in_([crashed.id, queued.id])).values(owner=None))
    return url


def test_list_shows_every_dataset_with_spent_in_flight_and_remaining(teams_url):
    result = runner.invoke(budget_app, ["list", "--ledger-url", teams_url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["exists"] is True
    adult, census = data["datasets"]
    assert (adult["dataset"], census["dataset"]) == ("adult", "census")
    assert (adult["lifetime_epsilon"], adult["spent_epsilon"], adult["in_flight_epsilon"]) == (5.0, 1.0, 2.5)
    assert (adult["in_flight_releases"], adult["releases"], adult["remaining_epsilon"]) == (2, 3, 1.5)
    assert (census["spent_epsilon"], census["in_flight_epsilon"], census["remaining_epsilon"]) == (0.25, 0.0, 0.75)
    with Ledger.open(teams_url) as ledger:  # the figures are the ones `show` and admission use
        assert adult["remaining_epsilon"] == ledger.summary("adult").remaining_epsilon
    table = runner.invoke(budget_app, ["list", "--ledger-url", teams_url], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    for text in ("adult", "census", "2.5 (2)", "1.5", "0.75", "in flight"):
        assert text in table.output


def test_list_on_a_missing_ledger_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "ledger.db"
    result = runner.invoke(budget_app, ["list", "--ledger-url", f"sqlite:///{missing}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"ledger": f"sqlite:///{missing}", "exists": False, "datasets": []}
    assert list(tmp_path.iterdir()) == []


def test_cancel_refunds_only_a_reservation_that_never_read_data(teams_url):
    result = runner.invoke(budget_app, ["cancel", "adult", "2026-03", "--ledger-url", teams_url])
    assert result.exit_code == 0, result.output
    assert "release `2026-03` attempt 1: cancelled (refunded epsilon 0.5, delta 1e-06)" in result.output
    refused = runner.invoke(budget_app, ["cancel", "adult", "2026-02", "--ledger-url", teams_url])
    assert refused.exit_code == 3, refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) <= 3
    assert "already read private data" in refused.output and "budget abandon adult 2026-02" in refused.output
    again = runner.invoke(budget_app, ["cancel", "adult", "2026-03", "--ledger-url", teams_url])
    assert again.exit_code == 1 and "has no attempt in flight" in again.output
    with Ledger.open(teams_url) as ledger:
        summary = ledger.summary("adult")
        assert [r.status for r in summary.releases] == ["published", "reserved", "cancelled"]
        assert summary.remaining_epsilon == 2.0  # 5 - 1 published - 2 still in flight (never refunded)


def test_cancel_refuses_a_run_that_is_alive_on_this_host(url):
    with Ledger.open(url) as ledger:
        ledger.reserve(dataset="adult", release_id="live", spec_digest="d", epsilon=0.5, delta=1e-6,
                       lifetime_epsilon=5.0, lifetime_delta=1e-5, accountant="rdp")
    result = runner.invoke(budget_app, ["cancel", "adult", "live", "--ledger-url", url])
    assert result.exit_code == 1 and "is still running as" in result.output
