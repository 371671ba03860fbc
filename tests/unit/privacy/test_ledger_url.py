"""Which ledger a release uses, and the pre-flight check that refuses an unusable one with exit code 2."""

from __future__ import annotations

import sys

import pytest

from safesynth.errors import SpecError
from safesynth.privacy.ledger import Ledger, check_ledger, preflight_ledger, resolve_ledger_url
from safesynth.spec import parse_spec


def make_spec(tmp_path, ledger_url=None):
    return parse_spec({
        "dataset": "toy", "source": "toy.csv", "columns": {"x": {"type": "boolean"}},
        "privacy": {"epsilon": 1.0, "lifetime_epsilon": 2.0}, "sampling": {"rows": 10},
        "publish": {"target": "out"}, **({"ledger": {"url": ledger_url}} if ledger_url else {}),
    }, base_dir=tmp_path)


def spec_error(url: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        check_ledger(url)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    return info.value


@pytest.fixture
def no_psycopg(monkeypatch):
    """Hide psycopg whether or not it is installed: ``import psycopg`` raises ImportError."""
    monkeypatch.setitem(sys.modules, "psycopg", None)


# -------------------------------------------------------------------------------------- resolution


def test_the_operator_environment_overrides_the_spec_and_the_command_line_overrides_both(tmp_path, monkeypatch):
    spec = make_spec(tmp_path, "sqlite:///state/ledger.db")
    monkeypatch.setenv("SAFESYNTH_HOME", str(tmp_path / "home"))
    assert resolve_ledger_url(spec) == f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    assert resolve_ledger_url(make_spec(tmp_path)) == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    assert resolve_ledger_url() == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAFESYNTH_LEDGER_URL", "sqlite:///ops/ledger.db")  # relative to the current directory
    assert resolve_ledger_url(spec) == f"sqlite:///{tmp_path / 'ops' / 'ledger.db'}"
    assert resolve_ledger_url(spec, override="postgresql+psycopg://u@db/x") == "postgresql+psycopg://u@db/x"
    with Ledger.for_spec(spec) as book:  # every caller resolves the same way
        assert book.url == f"sqlite:///{tmp_path / 'ops' / 'ledger.db'}"
    assert not (tmp_path / "home").exists()  # resolving creates nothing


def test_preflight_names_where_an_unusable_url_came_from(tmp_path, monkeypatch, no_psycopg):
    monkeypatch.setenv("SAFESYNTH_LEDGER_URL", "postgresql://ops:s3cret@db.internal/ledger")
    with pytest.raises(SpecError) as info:
        preflight_ledger(make_spec(tmp_path))
    message = str(info.value)
    assert message.startswith("`ledger.url` (postgresql+psycopg://ops:***@db.internal/ledger, from SAFESYNTH_LEDGER_URL)")
    assert "s3cret" not in message
    monkeypatch.delenv("SAFESYNTH_LEDGER_URL")
    assert preflight_ledger(make_spec(tmp_path, "sqlite:///l.db")) == f"sqlite:///{tmp_path / 'l.db'}"
    assert (tmp_path / "l.db").exists()


# --------------------------------------------------------------------------------------- pre-flight


def test_a_postgresql_url_without_its_driver_is_a_spec_error_with_the_fix(no_psycopg):
    error = spec_error("postgresql+psycopg://u:pw@localhost/x")
    assert str(error) == ("`ledger.url` (postgresql+psycopg://u:***@localhost/x) needs the `psycopg` driver, which is "
                          "not installed: pip install 'safesynth[postgres]'")
    assert "pip install 'safesynth[postgres]'" in str(spec_error("postgresql://u@localhost/x"))


def test_an_unknown_driver_or_unparsable_url_is_a_spec_error():
    assert "unknown database or driver `postgresql+nosuchdriver`" in str(spec_error("postgresql+nosuchdriver://h/x"))
    assert "must be a SQLAlchemy URL" in str(spec_error("not a url"))


def test_a_sqlite_path_under_a_file_or_in_an_uncreatable_directory_is_a_spec_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    error = spec_error(f"sqlite:///{tmp_path / 'file.txt' / 'state' / 'ledger.db'}")
    assert "cannot create directory" in str(error) and "choose a writable location" in str(error)
    assert "cannot create directory" in str(spec_error("sqlite:////proc/no-such-dir/ledger.db"))
    assert "is a directory" in str(spec_error(f"sqlite:///{tmp_path}"))
    assert "in-memory" in str(spec_error("sqlite://"))


def test_a_file_that_is_not_a_database_is_a_spec_error(tmp_path):
    (tmp_path / "ledger.db").write_text("this is not SQLite\n" * 100)
    error = spec_error(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert "cannot be used: cannot open the budget ledger" in str(error)


def test_a_usable_sqlite_url_is_created_with_its_directory_and_tables(tmp_path):
    check_ledger(f"sqlite:///{tmp_path / 'new' / 'dir' / 'ledger.db'}")
    book = Ledger.open_existing(f"sqlite:///{tmp_path / 'new' / 'dir' / 'ledger.db'}")
    assert book is not None
    with book:
        assert book.datasets() == []


def test_open_existing_creates_nothing(tmp_path):
    assert Ledger.open_existing(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}") is None
    (tmp_path / "empty.db").touch()
    assert Ledger.open_existing(f"sqlite:///{tmp_path / 'empty.db'}") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
