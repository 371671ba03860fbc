"""Sampled parts: how a worker writes one, and how the client checks and reads them back.

A part is one shard's rows as a Parquet file with the release schema. It is written whole or not at all
(:func:`write_bytes`), named by its shard (``part-00012.parquet``), and described by :class:`Part`. Before
the release goes on, :func:`verify_parts` checks that every planned part exists with its row count, size
and checksum; :class:`SampledRows` then streams them (never one big DataFrame) to the output writer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from safesynth.errors import SamplingError
from safesynth.schema import arrow_schema
from safesynth.spec import ReleaseSpec

__all__ = ["Part", "SampledRows", "encode_part", "is_remote", "local_path", "part_name", "read_bytes",
           "remove_tree", "verify_parts", "write_bytes"]


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """A written part, as reported by the worker that wrote it."""

    shard: int
    uri: str
    rows: int
    size: int
    sha256: str


def is_remote(uri: str) -> bool:
    """True for an fsspec URL other than ``file://`` (an object store, a remote filesystem)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def encode_part(frame: Any, spec: ReleaseSpec) -> bytes:
    """A shard's rows as Parquet bytes with the release schema (no release metadata yet)."""
    table = pa.Table.from_pandas(frame[list(spec.columns)], schema=arrow_schema(spec), preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` at ``uri`` whole or not at all: temporary name + rename locally, one PUT remotely.

    A local write needs its directory to exist already (the driver makes the parts directory) and raises
    FileNotFoundError otherwise: a shard still running after its run failed (Dask cannot stop a running
    task) must not recreate a parts directory the run has removed or quarantined.
    """
    if is_remote(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        fs.pipe_file(path, data)
        return
    path = local_path(uri)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




def read_bytes(uri: str) -> bytes:
    if is_remote(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        data: bytes = fs.cat_file(path)
        return data
    return local_path(uri).read_bytes()


def remove_tree(uri: str) -> None:
    """Remove a directory (or an object-store prefix) and everything under it; missing is fine."""
    if is_remote(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        return
    import secrets
    import shutil

    # Rename first, then remove: a shard still running after its run failed may be writing into the
    # directory, and rmtree on the live directory loses that race (its last rmdir finds the new part and,
    # ignoring errors, leaves the directory behind; seen in CI). After the rename no new entry can appear in
    # it, since writers resolve ``<dir>/<part>`` by name and never create directories (write_bytes).
    path = local_path(uri)
    doomed = path.with_name(f".{path.name}.removed-{secrets.token_hex(4)}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    if doomed.is_dir():
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        doomed.unlink(missing_ok=True)


def verify_parts(parts: Sequence[Part], expected: dict[int, int]) -> None:
    """Every expected shard has exactly one part with its row count, size and checksum.

    Args:
        parts: what the workers reported.
        expected: rows per shard index, from the shard plan.

    Raises:
        SamplingError: a part is missing, extra, short, or its bytes differ from what its worker wrote.
    """
    by_shard = {p.shard: p for p in parts}
    missing = sorted(set(expected) - set(by_shard))
    extra = sorted(set(by_shard) - set(expected))
    if missing or extra or len(by_shard) != len(parts):
        raise SamplingError(f"sampled parts do not match the shard plan (missing {missing[:5]}, unexpected "
                            f"{extra[:5]}); nothing was published")
    for index, rows in expected.items():
        part = by_shard[index]
        try:
            data = read_bytes(part.uri)
        except OSError as exc:
            raise SamplingError(f"part {index} cannot be read back ({exc.__class__.__name__}); nothing was "
                                "published") from exc
        if len(data) != part.size or hashlib.sha256(data).hexdigest() != part.sha256:
            raise SamplingError(f"part {index} changed after its worker wrote it; nothing was published")
        found = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        if part.rows != rows or found != rows:
            raise SamplingError(f"part {index} has {found} rows, the plan says {rows}; nothing was published")


@dataclass(frozen=True, slots=True)
class SampledRows:
    """The sampled parts of a release, in shard order; read in batches, never all at once."""

    parts: tuple[Part, ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def batches(self, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_rows`` rows, part after part."""
        for part in self.parts:
            source: Any = pa.BufferReader(read_bytes(part.uri)) if is_remote(part.uri) else str(local_path(part.uri))
            yield from pq.ParquetFile(source).iter_batches(batch_size=batch_rows)

    def read(self) -> pd.DataFrame:
        """All rows as one DataFrame (for consumers that need them together, such as the audit)."""
        frames = [pq.read_table(pa.BufferReader(read_bytes(p.uri))).to_pandas() for p in self.parts]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
