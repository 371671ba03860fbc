"""The shard plan, and the work one shard does on a Dask worker.

Sampling is post-processing of the fitted generator: a shard reads no private data, draws no privacy
noise and spends no budget, so it is safe to run on any worker, to retry and to recompute after a worker
dies. A shard is reproducible: its rows depend only on the fitted model, its row count, its seed (from the
spec's public seed and the shard index) and the generator's batch layout (``sampling.batch_size``), so a
recomputed shard writes the same bytes under the same name.

A shard writes its rows as one Parquet part straight from the worker (a temporary name and a rename on a
filesystem, one PUT on an object store) and returns only :class:`Part`: its location, row count, size and
checksum. The rows never travel back to the client.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from safesynth.errors import GeneratorError
from safesynth.generator.base import FittedGenerator
from safesynth.sampling.parts import Part, encode_part, is_remote, local_path, write_bytes
from safesynth.spec import ReleaseSpec

__all__ = ["ModelPlugin", "Shard", "ShardJob", "drop_model", "load_model", "run_shard", "shard_plan"]

log = logging.getLogger("safesynth")


@dataclass(frozen=True, slots=True)
class Shard:
    """One unit of sampling: ``rows`` rows from ``seed``; shard ``index`` becomes part ``index``."""

    index: int
    rows: int
    seed: int


def shard_plan(spec: ReleaseSpec) -> list[Shard]:
    """The spec's shards: ``sampling.shard_rows`` rows each (the last one fewer), seeds from the public seed.

    Fixed by the spec alone, so a retried or recomputed shard is identical.
    """
    rows, per = spec.sampling.rows, spec.sampling.shard_rows
    return [Shard(i, min(per, rows - start), int(np.random.SeedSequence([spec.sampling.seed, 2, i]).generate_state(1)[0]))
            for i, start in enumerate(range(0, rows, per))]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardJob:
    """What a worker needs for one shard: small and picklable (the model travels by location, not value)."""

    shard: Shard
    spec: ReleaseSpec  # the resolved spec (every domain known)
    model_uri: str  # a directory, or an fsspec URL of one
    part_uri: str  # where the part goes: a path, or an fsspec URL


# ------------------------------------------------------------------------------------ the model on workers

_MODELS: dict[str, FittedGenerator] = {}
_DOWNLOADS: dict[str, str] = {}
_LOCK = threading.Lock()


def load_model(model_uri: str, spec: ReleaseSpec) -> FittedGenerator:
    """The fitted generator at ``model_uri``, loaded once per process and cached.

    A remote model (an fsspec URL) is first copied to a temporary directory of this process.
    """
    with _LOCK:
        model = _MODELS.get(model_uri)
        if model is not None:
            return model
        from safesynth.generator import get_backend

        directory = local_path(model_uri)
        if is_remote(model_uri):
            import fsspec

            fs, root = fsspec.core.url_to_fs(model_uri)
            directory = Path(tempfile.mkdtemp(prefix="safesynth-model-"))
            fs.get(root.rstrip("/") + "/", str(directory), recursive=True)
            _DOWNLOADS[model_uri] = str(directory)
        model = get_backend(spec.generator.kind).load(directory, spec=spec)
        _MODELS[model_uri] = model
        return model


def drop_model(model_uri: str) -> None:
    """Forget a cached model (and remove its downloaded copy)."""
    with _LOCK:
        _MODELS.pop(model_uri, None)
        download = _DOWNLOADS.pop(model_uri, None)
    if download is not None:
        shutil.rmtree(download, ignore_errors=True)


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` for this worker process (glibc only).

    Dask's nanny starts workers with that variable so freed memory goes back to the OS at once; it also
    freezes glibc's mmap threshold at 128 KiB, so every tensor above that size is a fresh mmap and page
    faults. Measured here (bench/README.md): torch sampling ran 2.7x slower in a worker than in a plain
    process; with these thresholds it runs at the plain process's speed. Returns False where there is no
    glibc (nothing changes).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 64 * 2**20))


class ModelPlugin(WorkerPlugin):
    """Loads the fitted model once on every worker, including workers that join or restart later.

    Registered with the scheduler under a per-run ``name`` and unregistered at the end of the stage, so a
    long-lived cluster does not keep old models in memory.
    """

    def __init__(self, name: str, model_uri: str, spec: ReleaseSpec, *, torch_threads: int | None) -> None:
        self.name, self.model_uri, self.spec, self.torch_threads = name, model_uri, spec, torch_threads

    def setup(self, worker: Any) -> None:
        tune_malloc()
        if self.torch_threads is not None:
            os.environ["SAFESYNTH_TORCH_THREADS"] = str(self.torch_threads)
        load_model(self.model_uri, self.spec)

    def teardown(self, worker: Any) -> None:
        drop_model(self.model_uri)


def run_shard(job: ShardJob) -> Part:
    """Sample one shard on this worker and write its part; return only the part's metadata."""
    model = load_model(job.model_uri, job.spec)
    frame = model.sample(job.shard.rows, seed=job.shard.seed)
    if len(frame) != job.shard.rows:
        raise GeneratorError(f"shard {job.shard.index}: the generator returned {len(frame)} rows, "
                             f"not {job.shard.rows}")
    data = encode_part(frame, job.spec)
    write_bytes(job.part_uri, data)  # the driver made the directory; gone = the run stopped
    return Part(shard=job.shard.index, uri=job.part_uri, rows=job.shard.rows, size=len(data),
                sha256=hashlib.sha256(data).hexdigest())
