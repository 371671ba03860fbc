"""Prefect tasks of the release flow, one per stage in :mod:`safesynth.stages`.

Presets (see STYLE.md):
  * ``PRIVATE``: tasks that touch private rows, draw noise or spend budget. No retries (a retry would draw
    fresh noise and spend budget again) and no caching or result persistence (Prefect would hash or pickle
    private data to disk).
  * ``IO``: idempotent I/O (publishing to the target): retried with backoff.
Only small values (paths, contexts, decisions) pass between tasks, never DataFrames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from safesynth import stages
from safesynth.audit import AttackResult, GateDecision
from safesynth.publish import PublishedRelease

PRIVATE: dict[str, Any] = {"retries": 0, "cache_policy": NO_CACHE, "persist_result": False}
IO: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10], "cache_policy": NO_CACHE,
                      "persist_result": False}


@task(name="prepare", **PRIVATE)
def prepare(spec_path: str, release_id: str | None) -> stages.RunContext:
    return stages.prepare(spec_path, release_id)


@task(name="check-published", **IO)
def already_published(ctx: stages.RunContext) -> bool:
    return stages.already_published(ctx) is not None


@task(name="reserve-budget", **PRIVATE)
def reserve_budget(ctx: stages.RunContext) -> Any:
    return stages.reserve_budget(ctx)


@task(name="ingest", **PRIVATE)
def ingest(ctx: stages.RunContext, reservation: Any) -> Path:
    return stages.ingest(ctx, reservation)


@task(name="validate", **PRIVATE)
def validate(ctx: stages.RunContext, raw: Path) -> tuple[Path, dict[str, Any]]:
    return stages.validate(ctx, raw)


@task(name="split-holdout", **PRIVATE)
def split(ctx: stages.RunContext, clean: Path) -> tuple[Path, Path]:
    return stages.split(ctx, clean)


@task(name="fit-dp-generator", **PRIVATE)
def fit(ctx: stages.RunContext, train: Path) -> Path:
    return stages.fit(ctx, train)


@task(name="sample", **PRIVATE)
def sample(ctx: stages.RunContext, model: Path) -> Path:
    return stages.sample(ctx, model)


@task(name="write-parquet", **PRIVATE)
def write_output(ctx: stages.RunContext, synthetic: Path) -> list[Path]:
    return stages.write_output(ctx, synthetic)


@task(name="audit", **PRIVATE)
def audit(ctx: stages.RunContext, synthetic: Path, train: Path, holdout: Path) -> AttackResult:
    return stages.audit(ctx, synthetic, train, holdout)


@task(name="gate", **PRIVATE)
def gate(ctx: stages.RunContext, attack: AttackResult) -> GateDecision:
    return stages.gate(ctx, attack)


@task(name="publish", **IO)
def publish(ctx: stages.RunContext, files: list[Path], decision: GateDecision) -> PublishedRelease:
    return stages.publish(ctx, files, decision)


@task(name="settle-budget", **PRIVATE)
def settle(ctx: stages.RunContext, reservation: Any, status: str) -> None:
    stages.settle(ctx, reservation, status=status)


@task(name="cleanup", **PRIVATE)
def cleanup(ctx: stages.RunContext) -> None:
    stages.cleanup(ctx)
