"""`safesynth budget show`: the ledger as a table and as JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from safesynth.cli_budget import budget_app
from safesynth.privacy.ledger import Ledger

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
