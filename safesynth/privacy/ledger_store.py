"""Where the budget ledger lives and how it is reached: URL resolution, pre-flight checks, engines,
schema and its migrations, retries on transient errors, and the identity of the process owning a row.

The accounting rules are in :mod:`safesynth.privacy.ledger`; this module knows about databases only.

Which ledger (first match wins):

1. an explicit URL given by the operator on the command line (``--ledger-url``);
2. the environment variable ``SAFESYNTH_LEDGER_URL`` (operator configuration: it overrides the spec, so
   one deployment can point every release at its shared database whatever the specs say);
3. the spec's ``ledger.url``;
4. ``sqlite:///$SAFESYNTH_HOME/ledger.db`` (``SAFESYNTH_HOME`` defaulting to ``./.safesynth``).

A relative SQLite path is resolved against the spec's directory when it comes from the spec, against the
current directory otherwise. A bare ``postgresql://`` URL uses psycopg 3 (``pip install
'safesynth[postgres]'``). Any URL that cannot be used is a :class:`~safesynth.errors.SpecError` (exit 2)
naming ``ledger.url`` and where the URL came from.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from safesynth.errors import SpecError
from safesynth.spec import ReleaseSpec

__all__ = [
    "LEDGER_URL_ENV",
    "default_url",
    "display_url",
    "is_transient",
    "resolve_ledger_url",
    "resolve_with_source",
]

log = logging.getLogger(__name__)

LEDGER_URL_ENV = "SAFESYNTH_LEDGER_URL"
POSTGRES_FIX = "pip install 'safesynth[postgres]'"
#: The isolation level of every ledger transaction on PostgreSQL (see :func:`make_engine`).
POSTGRES_ISOLATION = "READ COMMITTED"

metadata = MetaData()
datasets = Table(
    "safesynth_budget_datasets",
    metadata,
    Column("dataset", String(128), primary_key=True),
    Column("lifetime_epsilon", Double, nullable=False),
    Column("lifetime_delta", Double, nullable=False),
    Column("created_at", DateTime, nullable=False),
    # Added in 0.3 (migrated by ALTER TABLE): the source the dataset's budget is bound to, see
    # safesynth.privacy.source_identity. One dataset per key (unique index below; NULLs do not collide).
    Column("source_key", Text, nullable=True),
    Column("source_inode", String(64), nullable=True),
)
source_key_index = Index("uq_safesynth_dataset_source_key", datasets.c.source_key, unique=True)
releases = Table(
    "safesynth_budget_releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset", String(128), ForeignKey(datasets.c.dataset), nullable=False, index=True),
    Column("release_id", String(255), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("spec_digest", String(128), nullable=False),
    Column("accountant", String(16), nullable=False),
    Column("planned_epsilon", Double, nullable=False),
    Column("planned_delta", Double, nullable=False),
    Column("status", String(16), nullable=False),
    Column("data_read", Boolean, nullable=False),
    Column("spent_epsilon", Double, nullable=True),
    Column("spent_delta", Double, nullable=True),
    Column("stages", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("data_read_at", DateTime, nullable=True),
    Column("finished_at", DateTime, nullable=True),
    # Added in 0.2 (migrated by ALTER TABLE): who holds an in-flight attempt, as Owner JSON.
    Column("owner", Text, nullable=True),
    UniqueConstraint("dataset", "release_id", "attempt", name="uq_safesynth_release_attempt"),
)
#: Columns added after the first schema: (table, name, SQL type), added to existing ledgers when missing.
_MIGRATIONS = ((releases, "owner", "TEXT"), (datasets, "source_key", "TEXT"),
               (datasets, "source_inode", "VARCHAR(64)"))

# ------------------------------------------------------------------------------------------------ URLs


def default_url() -> str:
    """SQLite file ``$SAFESYNTH_HOME/ledger.db`` (``SAFESYNTH_HOME`` defaults to ``./.safesynth``).

    Creates nothing: the directory is made when the ledger is first opened for writing.
    """
    home = Path(os.environ.get("SAFESYNTH_HOME") or ".safesynth").expanduser().resolve()
    return f"sqlite:///{home / 'ledger.db'}"


def resolve_ledger_url(spec: ReleaseSpec | None = None, *, override: str | None = None) -> str:
    """The ledger URL a command must use: ``override``, then ``$SAFESYNTH_LEDGER_URL``, then the spec.

    Args:
        spec: the release spec (its ``ledger.url``); ``None`` for commands without a spec.
        override: a URL the operator gave on the command line (``--ledger-url``).

    Returns:
        An absolute URL (relative SQLite paths resolved), or :func:`default_url`.
    """
    return resolve_with_source(spec, override=override)[0]


def resolve_with_source(spec: ReleaseSpec | None = None, *, override: str | None = None) -> tuple[str, str]:
    """:func:`resolve_ledger_url` and where the URL came from (for error messages)."""
    if override:
        return _absolute_sqlite(override, lambda p: str(Path(p).expanduser().resolve())), "--ledger-url"
    env = os.environ.get(LEDGER_URL_ENV)
    if env:
        return _absolute_sqlite(env, lambda p: str(Path(p).expanduser().resolve())), LEDGER_URL_ENV
    if spec is not None and spec.ledger.url:
        return _absolute_sqlite(spec.ledger.url, spec.resolve), "spec"
    return default_url(), "default ($SAFESYNTH_HOME)"


def _absolute_sqlite(url: str, resolve: Callable[[str], str]) -> str:
    if not url.startswith("sqlite:///") or url.startswith("sqlite:////"):
        return url
    path, sep, query = url.removeprefix("sqlite:///").partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    return f"sqlite:///{resolve(path)}{sep}{query}"


def display_url(url: str | URL) -> str:
    """The URL without its password, or a placeholder when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def _where(source: str) -> str:
    return "" if source == "spec" else f", from {source}"


def parse_checked(url: str, *, source: str) -> URL:
    """Parse ``url`` and check that its driver is installed; raises SpecError naming ``ledger.url``."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SpecError(f"`ledger.url` ({display_url(url)}{_where(source)}) must be a SQLAlchemy URL such as "
                        "sqlite:////abs/path/ledger.db or postgresql+psycopg://user@host/db") from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3: the `postgres` extra
    shown = f"{parsed.render_as_string(hide_password=True)}{_where(source)}"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise SpecError(f"`ledger.url` ({shown}) names an unknown database or driver "
                        f"`{parsed.drivername}`") from exc
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        fix = POSTGRES_FIX if parsed.get_backend_name() == "postgresql" else f"install the `{parsed.get_driver_name()}` package"
        raise SpecError(f"`ledger.url` ({shown}) needs the `{parsed.get_driver_name()}` driver, which is not "
                        f"installed: {fix}") from exc
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_database(parsed, shown)
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL (``None`` for ``file:`` URIs, which SQLite resolves itself)."""
    database = url.database or ""
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _check_sqlite_database(url: URL, shown: str) -> None:
    database = url.database or ""
    if not database or database == ":memory:" or "mode=memory" in database:
        raise SpecError(f"`ledger.url` ({shown}) is an in-memory database; the budget ledger must be a file "
                        "or a server so that spends outlive the process")
    path = sqlite_path(url)
    if path is not None and path.is_dir():
        raise SpecError(f"`ledger.url` ({shown}) is a directory; name a file, e.g. {path / 'ledger.db'}")


def ensure_sqlite_parent(url: URL, *, source: str) -> None:
    """Create the directory of a SQLite ledger; raises SpecError when it cannot be made or written."""
    path = sqlite_path(url)
    if path is None:
        return
    shown = f"{url.render_as_string(hide_password=True)}{_where(source)}"
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"`ledger.url` ({shown}): cannot create directory {parent} "
                        f"({exc.strerror or exc.__class__.__name__}); choose a writable location") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(f"`ledger.url` ({shown}): directory {parent} is not writable; choose a writable location")


# --------------------------------------------------------------------------------------------- engines


def make_engine(url: URL, *, lock_timeout: float) -> Engine:
    """An engine for ``url``; a statement waits ``lock_timeout`` seconds for a lock, then fails (and the
    callers retry it, see :func:`with_retries`)."""
    if url.get_backend_name() == "postgresql":
        options = f"-c lock_timeout={max(1, int(lock_timeout * 1000))}"  # 55P03 after that: transient
        # READ COMMITTED, whatever the server's default_transaction_isolation: reserve() locks the dataset
        # row, then reads the spends; each statement must see what the lock's previous holder committed.
        # Under REPEATABLE READ the snapshot is taken before the lock is granted, and two reservations
        # could both fit against a stale total (see the Concurrency section of safesynth.privacy.ledger).
        return create_engine(url, pool_pre_ping=True, isolation_level=POSTGRES_ISOLATION,
                             connect_args={"options": options})
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": lock_timeout})

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        # Take the write lock up front: read-then-insert in reserve() is then serialised across processes.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def tables_exist(conn: Connection) -> bool:
    return {datasets.name, releases.name} <= set(inspect(conn).get_table_names())


def prepare_schema(conn: Connection, *, create: bool) -> bool:
    """Create the tables (``create``) and add columns missing from older ledgers.

    Returns:
        False when ``create`` is off and the ledger has no tables yet (nothing was ever recorded).
    """
    if not tables_exist(conn):
        if not create:
            return False
        metadata.create_all(conn)
    missing = missing_columns(conn)
    for table, name, sql_type in _MIGRATIONS:
        if name in missing:
            exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN{exists} {name} {sql_type}")
    source_key_index.create(conn, checkfirst=True)
    return True


def missing_columns(conn: Connection) -> set[str]:
    """Columns added since the first schema that an older ledger does not have yet (read-only opens
    skip them). Their names are unique across the tables."""
    inspector = inspect(conn)
    present = {table.name: {c["name"] for c in inspector.get_columns(table.name)}
               for table in (datasets, releases)}
    return {name for table, name, _ in _MIGRATIONS if name not in present[table.name]}


# --------------------------------------------------------------------------------------------- retries

T = TypeVar("T")
#: PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock not available, too many
#: connections, server shutting down or starting; class 08 (connection exceptions) is matched by prefix.
_PG_TRANSIENT = {"40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03"}
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy")
_jitter = random.Random()  # backoff jitter only; never privacy noise


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may succeed on retry: a held lock, a serialization conflict, a dropped connection."""
    if isinstance(exc, PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and (code in _PG_TRANSIENT or code.startswith("08")):
        return True
    text = str(orig).lower()
    return any(marker in text for marker in _SQLITE_TRANSIENT)


RETRY_ENV = "SAFESYNTH_LEDGER_RETRY_SECONDS"


def retry_seconds() -> float:
    """How long closing writes retry a busy ledger: ``$SAFESYNTH_LEDGER_RETRY_SECONDS``, else 60."""
    try:
        value = float(os.environ.get(RETRY_ENV) or 60.0)
    except ValueError:
        return 60.0
    return value if value >= 0 and value == value else 60.0


def with_retries(action: Callable[[], T], *, what: str, retry_for: float, first_delay: float = 0.05) -> T:
    """Run ``action``; on a transient SQLAlchemy error retry with bounded exponential backoff.

    Args:
        action: the whole transaction (it must be safe to run again: idempotent or rolled back).
        what: what is being written, for the log.
        retry_for: give up once this many seconds have passed since the first try.
        first_delay: the first wait; doubled after each try, at most 4 s, with up to 50 % jitter.

    Raises:
        SQLAlchemyError: the last error, when it is not transient or the time is up.
    """
    deadline = time.monotonic() + retry_for
    delay = first_delay
    tries = 0
    while True:
        tries += 1
        try:
            return action()
        except SQLAlchemyError as exc:
            wait = delay * (1.0 + 0.5 * _jitter.random())
            if not is_transient(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("budget ledger busy while %s (%s, try %d); retrying in %.2f s", what,
                        exc.__class__.__name__, tries, wait)
            time.sleep(wait)
            delay = min(4.0, delay * 2.0)
