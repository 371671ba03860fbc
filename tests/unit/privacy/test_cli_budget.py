"""`safesynth budget`: show (table, JSON, missing ledger), set-lifetime and abandon."""

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
