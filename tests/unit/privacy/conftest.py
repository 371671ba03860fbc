"""Ledger fixtures: a fresh SQLite ledger per test, a fresh PostgreSQL database per test (``pg_url``), and no
operator ledger URL leaking in from outside."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

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


@pytest.fixture
def pg_url(postgres_url):
    """A fresh database on the session's PostgreSQL server (tests/conftest.py), dropped afterwards."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"safesynth_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request):
    """The URL of an empty ledger on each backend: SQLite (``url``), then PostgreSQL (``pg_url``)."""
    return request.getfixturevalue("url" if request.param == "sqlite" else "pg_url")
