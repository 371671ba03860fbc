"""Prefect tasks of the release flow: one per stage of :mod:`safesynth.stages`, and the runner that uses them.

:func:`safesynth.release.run_release` owns the stage order; the flow passes :func:`run_as_task`, which
runs each stage through its task here. Presets (see STYLE.md):
  * ``PRIVATE``: tasks that touch private rows, draw noise or spend budget. No retries (a retry would draw
    fresh noise and spend budget again) and no caching or result persistence (Prefect would hash or pickle
    private data to disk).
  * ``IO``: idempotent I/O (checking and publishing to the target): retried with backoff.
Only small values (contexts, paths, decisions) pass between tasks, never DataFrames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from safesynth import stages
from safesynth.errors import InternalError
from safesynth.sampling import Progress, SampledRows

T = TypeVar("T")

PRIVATE: dict[str, Any] = {"retries": 0, "cache_policy": NO_CACHE, "persist_result": False}
IO: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10], "cache_policy": NO_CACHE,
                      "persist_result": False}

prepare = task(stages.prepare, name="prepare", **PRIVATE)
already_published = task(stages.already_published, name="check-published", **IO)
spent_attempt = task(stages.spent_attempt, name="check-slot", **PRIVATE)
reserve_budget = task(stages.reserve_budget, name="reserve-budget", **PRIVATE)
ingest = task(stages.ingest, name="ingest", **PRIVATE)
validate = task(stages.validate, name="validate", **PRIVATE)
split = task(stages.split, name="split-holdout", **PRIVATE)
insert_canaries = task(stages.insert_canaries, name="insert-canaries", **PRIVATE)
fit = task(stages.fit, name="fit-dp-generator", **PRIVATE)


def _sample_with_progress(ctx: stages.RunContext, fitted: stages.Fitted) -> SampledRows:
    """:func:`stages.sample` with a Prefect progress artifact that follows the finished shards."""
    artifact = create_progress_artifact(0.0, key="sampling-progress",
                                        description=f"Shards sampled for release {ctx.release_id}")

    def progress(p: Progress) -> None:
        update_progress_artifact(artifact, 100.0 * p.rows_done / p.rows,
                                 description=f"{p.shards_done}/{p.shards} shards of release {ctx.release_id}")

    return stages.sample(ctx, fitted, progress=progress)


_sample_with_progress.stage = stages.sample  # type: ignore[attr-defined]  # what run_as_task checks
sample = task(_sample_with_progress, name="sample", **PRIVATE)
write_output = task(stages.write_output, name="write-parquet", **PRIVATE)
audit = task(stages.audit, name="audit", **PRIVATE)
gate = task(stages.gate, name="gate", **PRIVATE)
publish = task(stages.publish, name="publish", **IO)
settle = task(stages.settle, name="settle-budget", **PRIVATE)
cleanup = task(stages.cleanup, name="cleanup", **PRIVATE)

TASKS: dict[str, Task[..., Any]] = {t.name: t for t in (
    prepare, already_published, spent_attempt, reserve_budget, ingest, validate, split, insert_canaries, fit, sample, write_output,
    audit, gate,
    publish, settle, cleanup,
)}


def run_as_task(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """A :class:`safesynth.release.Runner` that runs each stage as its Prefect task."""
    wrapped = TASKS.get(name)
    if wrapped is None or (wrapped.fn is not fn and getattr(wrapped.fn, "stage", None) is not fn):
        raise InternalError(f"no Prefect task wraps stage `{name}` ({getattr(fn, '__name__', fn)})")
    result: T = wrapped(*args, **kwargs)
    return result
