"""The ``delta`` publisher: each release is one Delta Lake commit to the table at ``publish.target``.

Layout: releases are *appended* to one table with a ``release_id`` column (the table is partitioned by it),
so every release stays readable for as long as the table exists, whatever ``VACUUM`` or log retention do to
older versions; a consumer reads one release with a filter on ``release_id`` (``releases show`` prints the
latest id), or the table as of a release with time travel (``DeltaTable(uri, version=...)``).

Each commit's ``commitInfo`` holds :func:`safesynth.publishers.privacy_properties` of the release (its
epsilon, delta, release id, dataset, spec digest and the whole published manifest): ``DeltaTable.history()``
is the list of releases. Nothing else is added to the commit.

Atomicity and races: the data files are written first and become visible only with the commit, one log
entry put-if-absent (a local hard link; on S3 a conditional PUT, which delta-rs 1.x uses natively). The
commit is made with ``max_commit_retries=0`` at exactly the version after the one checked for the release
id: a concurrent commit makes it fail, and it is retried only after the history was read again. So of two
publishers of one release id exactly one commits; the other finds the winner's commit and returns "already
published" (same manifest) or raises :class:`~safesynth.errors.PublishError` (different manifest). A
publisher that dies before its commit leaves only unreferenced data files (removed by ``VACUUM``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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

__all__ = ["RELEASE_COLUMN", "DeltaPublisher"]

#: The column every release's rows carry (and the table's partition column).
RELEASE_COLUMN = "release_id"
#: Commits attempted while other releases keep landing first.
_ATTEMPTS = 5


def _storage_options(target: PublishTarget) -> dict[str, str]:
    options = {k: str(v) for k, v in target.storage_options.items()}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not any(k.upper() in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "ENDPOINT_URL") for k in options):
        options["AWS_ENDPOINT_URL"] = endpoint
    return options


@register
class DeltaPublisher(VersionedTable):
    """``publish.format: delta``: one commit per release to the Delta table at ``publish.target``."""

    format = "delta"

    def __init__(self, target: PublishTarget) -> None:
        self.uri = target.target
        self.storage_options = _storage_options(target)

    def check(self) -> None:
        import deltalake  # noqa: F401 - raises ImportError early; create_publisher turns it into a SpecError

        if "://" not in self.uri or self.uri.startswith("file://"):
            path = Path(self.uri.removeprefix("file://"))
            if path.exists() and not path.is_dir():
                raise SpecError(f"`publish.target` ({self.uri}) must be a directory (the Delta table)")
            if path.is_dir() and any(path.iterdir()) and not (path / "_delta_log").is_dir():
                raise SpecError(f"`publish.target` ({self.uri}) is a non-empty directory that is not a Delta table")
        # Object-store targets are checked when publishing (credentials and buckets are the store's business).

    def check_schema(self, schema: pa.Schema) -> None:
        try:
            table = self._table(required=False)
        except PublishError as exc:
            raise SpecError(f"`publish.target`: {exc}") from exc
        if table is not None:
            check_columns(pa.schema(table.schema().to_arrow()), schema, where=self.uri)

    def location(self, dataset: str, release_id: str) -> str:
        return self.uri

    # Reading -------------------------------------------------------------------------------------

    def _table(self, *, required: bool = True) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            return DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            if required:
                raise PublishError(f"no Delta table at {self.uri}") from None
            return None
        except (DeltaError, OSError) as exc:
            raise PublishError(f"cannot open the Delta table at {self.uri}: {exc.__class__.__name__}: "
                               f"{_first_line(exc)}") from exc

    def _versions(self, table: Any) -> list[tuple[int, dict[str, Any]]]:
        """``(version, manifest)`` of every safesynth commit, oldest first."""
        from deltalake.exceptions import DeltaError

        try:
            history = table.history()
        except (DeltaError, OSError) as exc:
            raise PublishError(f"cannot read the history of {self.uri}: {exc.__class__.__name__}") from exc
        out = []
        for entry in history:
            manifest = manifest_from_properties(entry)
            if manifest is not None:
                out.append((int(entry["version"]), manifest))
        return sorted(out, key=lambda vm: vm[0])

    def _open(self) -> Any:
        return self._table(required=False)

    # Publishing ----------------------------------------------------------------------------------

    def publish(self, files: list[Path], manifest: dict[str, Any], *, dataset: str,
                release_id: str) -> PublishedRelease:
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError

        props = privacy_properties(manifest)
        for _ in range(_ATTEMPTS):
            table = self._table(required=False)
            if table is not None:
                done = self._already(table, manifest, release_id)
                if done is not None:
                    return done
            try:
                write_deltalake(
                    self.uri if table is None else table, _batches(files, release_id), mode="append",
                    partition_by=[RELEASE_COLUMN], schema_mode="merge", storage_options=self.storage_options,
                    commit_properties=CommitProperties(custom_metadata=props, max_commit_retries=0),
                )
            except CommitFailedError:
                continue  # another commit landed first: read the history again
            except (DeltaError, OSError, pa.ArrowException) as exc:
                if table is None and "already exists" in str(exc).lower():
                    continue  # a concurrent first publish created the table
                raise PublishError(f"cannot publish release `{release_id}` to the Delta table at {self.uri}: "
                                   f"{exc.__class__.__name__}: {_first_line(exc)}") from exc
            found = self._find(self._table(), release_id)
            if found is None:
                raise PublishError(f"release `{release_id}` was committed to {self.uri} but is not in its history")
            return PublishedRelease(location=self.uri, manifest=f"{self.uri}@v{found[0]}",
                                    files=tuple(Path(f).name for f in files), version=str(found[0]))
        raise PublishError(f"could not commit release `{release_id}` to {self.uri}: other commits kept landing "
                           f"first ({_ATTEMPTS} attempts); publish it again")

    def _already(self, table: Any, manifest: dict[str, Any], release_id: str) -> PublishedRelease | None:
        found = self._find(table, release_id)
        if found is None:
            return None
        version, existing = found
        if not same_manifest(existing, manifest):
            raise PublishError(f"release `{release_id}` is already published in {self.uri} (version {version}); "
                               "choose a new --release-id (published releases are immutable)")
        return PublishedRelease(location=self.uri, manifest=f"{self.uri}@v{version}", files=(),
                                already_published=True, version=str(version))


def _batches(files: list[Path], release_id: str) -> pa.RecordBatchReader:
    """The parts' rows with a constant ``release_id`` column, streamed one record batch at a time."""
    if not files:
        raise PublishError("a release needs at least one Parquet part")
    base = pq.read_schema(files[0]).remove_metadata()
    if RELEASE_COLUMN in base.names:
        raise PublishError(f"column `{RELEASE_COLUMN}` is reserved by format delta; rename the spec's column")
    schema = base.append(pa.field(RELEASE_COLUMN, pa.string(), nullable=False))

    def gen() -> Iterator[pa.RecordBatch]:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches():
                tag = pa.array([release_id] * batch.num_rows, pa.string())
                yield pa.RecordBatch.from_arrays([*batch.columns, tag], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, gen())


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]

