"""The ``iceberg`` publisher: each release is one ``append`` snapshot of an Iceberg table in a SQL catalog.

``publish.catalog`` is the SQLAlchemy URL of pyiceberg's :class:`~pyiceberg.catalog.sql.SqlCatalog` (SQLite
for one publishing host, PostgreSQL for several), ``publish.target`` the warehouse (a path or an object-store
URL; ``publish.storage_options`` are FileIO properties such as ``s3.endpoint``) and ``publish.table`` the
table, ``namespace.name``, created on first publish and partitioned by ``release_id``.

As with :mod:`safesynth.publish_delta`, releases are appended with a ``release_id`` column, so every release
stays readable (``table.scan(row_filter=EqualTo("release_id", ...))``) whatever snapshot expiry does; the
table as of a release is ``table.scan(snapshot_id=...)``. Each snapshot's summary holds
:func:`safesynth.publishers.privacy_properties` of its release, and nothing else of ours.

Atomicity and races: the data files are written first and become visible only when the catalog swaps the
table's metadata pointer (an SQL ``UPDATE ... WHERE metadata_location = <the one read>``). The table is
created with ``commit.retry.num-retries = 0``, so pyiceberg never re-applies an append on top of a commit it
did not see; a failed commit is retried here only after the snapshots were read again. Of two publishers of
one release id exactly one commits; the other returns "already published" (same manifest) or raises
:class:`~safesynth.errors.PublishError` (different manifest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from safesynth.errors import PublishError, SpecError
from safesynth.publishers import (
    PublishedRelease,
    PublishTarget,
    VersionedTable,
    check_columns,
    manifest_from_properties,
    privacy_properties,
    register,
    same_manifest,
)

__all__ = ["RELEASE_COLUMN", "IcebergPublisher"]

RELEASE_COLUMN = "release_id"
_ATTEMPTS = 5
_NO_RETRIES = {"commit.retry.num-retries": "0"}


@register
class IcebergPublisher(VersionedTable):
    """``publish.format: iceberg``: one snapshot per release of ``publish.table`` in ``publish.catalog``."""

    format = "iceberg"

    def __init__(self, target: PublishTarget) -> None:
        if target.catalog is None or target.table is None:
            raise SpecError("`publish.format` (iceberg) needs `publish.catalog` and `publish.table`")
        self.catalog_url = target.catalog
        self.table_name = target.table
        self.warehouse = target.target if "://" in target.target else Path(target.target).resolve().as_uri()
        self.properties = {str(k): str(v) for k, v in target.storage_options.items()}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "s3.endpoint" not in self.properties:
            self.properties["s3.endpoint"] = endpoint

    def check(self) -> None:
        import pyiceberg.catalog.sql  # noqa: F401 - raises ImportError early
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.catalog_url)
        except ArgumentError as exc:
            raise SpecError(f"`publish.catalog` ({self.catalog_url}) is not a SQLAlchemy URL") from exc
        try:
            url.get_dialect()
        except Exception as exc:  # noqa: BLE001 - NoSuchModuleError, or the driver's ImportError
            raise SpecError(f"`publish.catalog` ({self.catalog_display}): no SQLAlchemy driver for "
                            f"{url.drivername} ({exc.__class__.__name__}); install it") from exc
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            parent = Path(url.database).parent
            if not parent.is_dir():
                raise SpecError(f"`publish.catalog` ({self.catalog_url}): directory {parent} does not exist")

    def check_schema(self, schema: pa.Schema) -> None:
        from sqlalchemy.engine import make_url

        url = make_url(self.catalog_url)
        if url.get_backend_name() == "sqlite" and (not url.database or not Path(url.database).exists()):
            return  # no catalog yet: the first publish creates it and the table
        try:
            table = self._table(self._catalog())
        except PublishError as exc:
            raise SpecError(f"`publish.catalog`: {exc}") from exc
        if table is not None:
            check_columns(table.schema().as_arrow(), schema, where=f"{self.table_name}")

    def location(self, dataset: str, release_id: str) -> str:
        return f"{self.catalog_display}#{self.table_name}"

    @property
    def catalog_display(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.catalog_url).render_as_string(hide_password=True)

    # Reading -------------------------------------------------------------------------------------

    def _catalog(self) -> Any:
        from pyiceberg.catalog.sql import SqlCatalog

        try:
            return SqlCatalog("safesynth", uri=self.catalog_url, warehouse=self.warehouse, **self.properties)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy and driver errors: one line, never a traceback
            raise PublishError(f"cannot open the Iceberg catalog {self.catalog_display}: "
                               f"{exc.__class__.__name__}") from exc

    def _table(self, catalog: Any) -> Any:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return catalog.load_table(self.table_name)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def _versions(self, table: Any) -> list[tuple[int, dict[str, Any]]]:
        """``(snapshot id, manifest)`` of every safesynth snapshot, oldest first."""
        out = []
        for snap in sorted(table.snapshots(), key=lambda s: (s.sequence_number or 0, s.timestamp_ms)):
            summary = getattr(snap.summary, "additional_properties", None) or {}
            manifest = manifest_from_properties(summary)
            if manifest is not None:
                out.append((int(snap.snapshot_id), manifest))
        return out

    def _open(self) -> Any:
        return self._table(self._catalog())

    # Publishing ----------------------------------------------------------------------------------

    def publish(self, files: list[Path], manifest: dict[str, Any], *, dataset: str,
                release_id: str) -> PublishedRelease:
        from pyiceberg.exceptions import CommitFailedException

        data = _rows(files, release_id)
        props = privacy_properties(manifest)
        catalog = self._catalog()
        for _ in range(_ATTEMPTS):
            try:
                table = self._table(catalog) or self._create(catalog, data.schema)
                _check_no_retries(table, self.table_name)
                found = self._find(table, release_id)
                if found is not None:
                    return self._existing(found, manifest, release_id)
                with table.transaction() as tx:
                    if _new_columns(table, data.schema):
                        with tx.update_schema() as update:
                            update.union_by_name(data.schema)
                    tx.append(data, snapshot_properties=props)
            except CommitFailedException:
                continue  # another commit landed first: read the snapshots again
            except PublishError:
                raise
            except Exception as exc:  # noqa: BLE001 - catalog, FileIO and schema errors: one line
                raise PublishError(f"cannot publish release `{release_id}` to Iceberg table {self.table_name}: "
                                   f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:300]}") from exc
            found = self._find(catalog.load_table(self.table_name), release_id)
            if found is None:
                raise PublishError(f"release `{release_id}` was committed to {self.table_name} but has no snapshot")
            return PublishedRelease(location=self.location(dataset, release_id),
                                    manifest=f"{self.table_name}@{found[0]}",
                                    files=tuple(Path(f).name for f in files), version=str(found[0]))
        raise PublishError(f"could not commit release `{release_id}` to {self.table_name}: other commits kept "
                           f"landing first ({_ATTEMPTS} attempts); publish it again")

    def _existing(self, found: tuple[int, dict[str, Any]], manifest: dict[str, Any],
                  release_id: str) -> PublishedRelease:
        snapshot, existing = found
        if not same_manifest(existing, manifest):
            raise PublishError(f"release `{release_id}` is already published in {self.table_name} (snapshot "
                               f"{snapshot}); choose a new --release-id (published releases are immutable)")
        return PublishedRelease(location=self.location("", release_id), manifest=f"{self.table_name}@{snapshot}",
                                files=(), already_published=True, version=str(snapshot))

    def _create(self, catalog: Any, schema: pa.Schema) -> Any:
        """Create the table (partitioned by ``release_id``, no commit retries by pyiceberg)."""
        from pyiceberg.exceptions import CommitFailedException

        namespace = self.table_name.rsplit(".", 1)[0]
        catalog.create_namespace_if_not_exists(namespace)
        table = catalog.create_table_if_not_exists(self.table_name, schema=schema, properties=_NO_RETRIES)
        if not any(f.name == RELEASE_COLUMN for f in table.spec().fields):
            try:
                with table.update_spec() as update:
                    update.add_identity(RELEASE_COLUMN)
            except (CommitFailedException, ValueError):
                pass  # a concurrent first publish partitioned it
            table = catalog.load_table(self.table_name)
        return table


def _check_no_retries(table: Any, name: str) -> None:
    if table.properties.get("commit.retry.num-retries") != "0":
        raise PublishError(f"Iceberg table {name} was not created by safesynth: pyiceberg would retry its commits "
                           "on top of concurrent ones; set its property commit.retry.num-retries to 0")


def _new_columns(table: Any, schema: pa.Schema) -> bool:
    have = {f.name for f in table.schema().fields}
    return any(name not in have for name in schema.names)


def _rows(files: list[Path], release_id: str) -> pa.Table:
    """The parts' rows with a constant ``release_id`` column (one table: pyiceberg appends a whole table)."""
    if not files:
        raise PublishError("a release needs at least one Parquet part")
    tables = [pq.read_table(f) for f in files]
    data = pa.concat_tables(tables).replace_schema_metadata(None)
    if RELEASE_COLUMN in data.column_names:
        raise PublishError(f"column `{RELEASE_COLUMN}` is reserved by format iceberg; rename the spec's column")
    return data.append_column(pa.field(RELEASE_COLUMN, pa.string(), nullable=False),
                              pa.array([release_id] * data.num_rows, pa.string()))
