"""Ledger fixtures: a fresh SQLite ledger per test, and no operator ledger URL leaking in from outside."""

from __future__ import annotations

import pytest

from safesynth.privacy.ledger import Ledger


@pytest.fixture(autouse=True)
def _no_operator_ledger_url(monkeypatch):
    monkeypatch.delenv("SAFESYNTH_LEDGER_URL", raising=False)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger(url):
    with Ledger.open(url) as book:
        yield book
