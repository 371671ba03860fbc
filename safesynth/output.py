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
    frames: Iterable[pd.DataFrame],
    directory: Path,
    *,
    spec: ReleaseSpec,
    metadata: Mapping[str, Any],
) -> list[Path]:
    """Write frames as ``part-00000.parquet``... with the release schema and key-value metadata.

    ``metadata`` values are stored as strings (dicts/lists as JSON) under ``safesynth.<key>``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(spec)
    kv = {f"{METADATA_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
          for k, v in metadata.items()}
    schema = schema.with_metadata({**(schema.metadata or {}), **{k.encode(): str(v).encode() for k, v in kv.items()}})
    paths = []
    for i, frame in enumerate(frames):
        table = pa.Table.from_pandas(frame[list(spec.columns)], schema=schema, preserve_index=False)
        path = directory / f"part-{i:05d}.parquet"
        pq.write_table(table, path, compression="zstd", write_statistics=True)
        paths.append(path)
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
