"""Parquet output: the synthetic rows with the declared schema and the privacy parameters in the metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from safesynth.schema import arrow_schema
from safesynth.spec import ReleaseSpec

__all__ = ["METADATA_PREFIX", "read_release_metadata", "sha256_file", "write_parquet"]

METADATA_PREFIX = "safesynth."


def write_parquet(
    batches: Iterable[pa.RecordBatch | pd.DataFrame],
    directory: Path,
    *,
    spec: ReleaseSpec,
    metadata: Mapping[str, Any],
    rows_per_file: int | None = None,
) -> list[Path]:
    """Stream rows into ``part-00000.parquet``... with the release schema and key-value metadata.

    A new file starts every ``rows_per_file`` rows (default ``publish.rows_per_file``); only one batch is
    in memory at a time. An empty input still gives one (empty) file. ``metadata`` values are stored as
    strings (dicts/lists as JSON) under ``safesynth.<key>``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    per = rows_per_file or spec.publish.rows_per_file
    base = arrow_schema(spec)
    kv = {f"{METADATA_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
          for k, v in metadata.items()}
    extra = {k.encode(): str(v).encode() for k, v in kv.items()}
    columns = list(spec.columns)
    paths: list[Path] = []
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None  # the base schema, plus the pandas metadata of the first batch
    in_file = 0

    def new_file() -> pq.ParquetWriter:
        path = directory / f"part-{len(paths):05d}.parquet"
        paths.append(path)
        return pq.ParquetWriter(path, schema or base.with_metadata({**(base.metadata or {}), **extra}),
                                compression="zstd", write_statistics=True)

    try:
        for batch in batches:
            table = (pa.Table.from_pandas(batch[columns], schema=base, preserve_index=False)
                     if isinstance(batch, pd.DataFrame) else pa.Table.from_batches([batch]).select(columns))
            if schema is None:  # keep pandas' dtypes metadata (nullable integers stay Int64 when read back)
                schema = base.with_metadata({**(base.metadata or {}), **(table.schema.metadata or {}), **extra})
            table = table.cast(schema)
            offset = 0
            while offset < table.num_rows:
                if writer is None or in_file >= per:
                    if writer is not None:
                        writer.close()
                    writer, in_file = new_file(), 0
                take = min(per - in_file, table.num_rows - offset)
                writer.write_table(table.slice(offset, take))
                offset += take
                in_file += take
        if writer is None:
            writer = new_file()
    finally:
        if writer is not None:
            writer.close()
    return paths


def read_release_metadata(path: str | Path) -> dict[str, str]:
    """The ``safesynth.*`` key-value metadata of a Parquet file written by :func:`write_parquet`."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode()[len(METADATA_PREFIX):]: v.decode() for k, v in meta.items()
            if k.decode().startswith(METADATA_PREFIX)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
