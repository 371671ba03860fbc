"""Scheduled releases: one Prefect deployment per release spec. The schedule defaults live here only.

``safesynth deploy SPEC --cron ... --timezone ... --pool ...`` registers the release flow against the
configured Prefect API, to run on a ``process`` work pool (``prefect worker start --pool safesynth``);
``safesynth serve SPEC --cron ...`` serves it from one long-lived process instead (single host, no work
pool or worker; the schedule still needs a server: Prefect's embedded API runs no scheduler).

What a deployment holds:
  * one parameter, the spec's absolute path: privacy numbers live in the spec and cannot be edited from
    the UI;
  * one cron schedule with its time zone (:data:`DEFAULT_CRON`, :data:`DEFAULT_TIMEZONE` unless given);
  * the name of the spec's dataset (``safesynth-release/<dataset>``);
  * the environment a run needs on the worker: this host's ``SAFESYNTH_HOME`` (the ledger and the work
    directories) and the offline model settings.

The release flow takes the dataset's one-slot global concurrency limit (:mod:`safesynth.flows.limits`),
created here too, and names each run's release after its scheduled slot, so a slot re-run spends nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType
from prefect.workers.process import ProcessWorker
from pydantic import ValidationError
from safesynth.flows.limits import ensure_limit
from safesynth.flows.release import release

from safesynth.errors import InternalError, SpecError
from safesynth.preflight import preflight
from safesynth.spec import load_spec

log = logging.getLogger("safesynth")

__all__ = ["DEFAULT_CRON", "DEFAULT_POOL", "DEFAULT_TIMEZONE", "ReleaseDeployment", "deploy_release",
           "plan_deployment", "serve_release"]

#: The release schedule, in one place: Mondays 02:00 ...
DEFAULT_CRON = "0 2 * * 1"
#: ... in this time zone (IANA name). Slots are converted to UTC for release ids.
DEFAULT_TIMEZONE = "UTC"
#: The process work pool ``safesynth deploy`` targets (created if missing).
DEFAULT_POOL = "safesynth"
#: Variables a scheduled run takes from the deploying host: where the ledger and work directories are,
#: and how models and Great Expectations behave offline. A worker's own environment fills in the rest.
CARRIED_ENV = ("SAFESYNTH_HOME", "SAFESYNTH_LEDGER_URL", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
               "GX_ANALYTICS_ENABLED")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseDeployment:
    """A checked plan for one deployment: which spec, under which name, on which schedule."""

    spec_path: str
    dataset: str
    name: str
    cron: str
    timezone: str

    @property
    def full_name(self) -> str:
        """``<flow name>/<deployment name>``, as ``run_deployment`` and ``prefect deployment run`` take it."""
        return f"{release.name}/{self.name}"

    def schedule(self) -> Any:
        """The Prefect schedule: the cron in its time zone."""
        return Cron(self.cron, timezone=self.timezone)


def plan_deployment(spec_path: str | os.PathLike[str], *, cron: str = DEFAULT_CRON,
                    timezone: str = DEFAULT_TIMEZONE, name: str | None = None) -> ReleaseDeployment:
    """Check the spec (loaded, and every check that needs no private data) and the schedule.

    Raises:
        SpecError: a bad spec, source location, target or ledger, or a bad cron or time zone (exit 2).
    """
    spec = load_spec(spec_path)
    preflight(spec)
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "invalid")
        raise SpecError(f"`--cron` ({cron!r}) with `--timezone` ({timezone!r}) must be a valid cron string "
                        f"and IANA time zone: {reason}") from exc
    return ReleaseDeployment(spec_path=str(Path(spec_path).resolve()), dataset=spec.dataset,
                             name=name or spec.dataset, cron=cron, timezone=timezone)


def _runner_deployment(planned: ReleaseDeployment, *, pool: str | None) -> RunnerDeployment:
    env = {key: os.environ[key] for key in CARRIED_ENV if key in os.environ}
    if "SAFESYNTH_HOME" in env:  # a relative home would resolve in the worker's temporary directory
        env["SAFESYNTH_HOME"] = str(Path(env["SAFESYNTH_HOME"]).resolve())
    deployment: RunnerDeployment = release.to_deployment(
        name=planned.name,
        schedule=planned.schedule(),
        parameters={"spec_path": planned.spec_path},
        description=f"DP synthetic release of dataset `{planned.dataset}` from {planned.spec_path}.",
        tags=["safesynth", f"dataset:{planned.dataset}"],
        work_pool_name=pool,
        job_variables={"env": {**env, "PREFECT_LOGGING_EXTRA_LOGGERS": "safesynth"}} if pool else None,
        entrypoint_type=EntrypointType.MODULE_PATH,  # the installed package: no source to pull
        enforce_parameter_schema=True,
    )
    return deployment


def ensure_process_pool(pool: str) -> None:
    """Create the ``process`` work pool ``pool`` if missing (logged). Raises SpecError for another type."""
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
                log.info("created process work pool %s; start a worker with `prefect worker start --pool %s`",
                         pool, pool)
            except ObjectAlreadyExists:  # created meanwhile
                pass
            return
    if existing.type != "process":
        raise SpecError(f"`--pool` ({pool}) must be a `process` work pool, not `{existing.type}`")


def deploy_release(planned: ReleaseDeployment, *, pool: str = DEFAULT_POOL) -> UUID:
    """Register (or update) the deployment on ``pool`` and its dataset's concurrency limit.

    Returns the deployment's id.
    """
    ensure_process_pool(pool)
    ensure_limit(planned.dataset)
    applied = _runner_deployment(planned, pool=pool).apply(work_pool_name=pool, _sync=True)  # type: ignore[call-arg]
    if not isinstance(applied, UUID):  # pragma: no cover - `_sync=True` returns the id, never a coroutine
        raise InternalError(f"deploying {planned.full_name} returned {type(applied).__name__}, not an id")
    deployment_id = applied
    log.info("deployed %s (id %s): %s %s, pool %s, spec %s", planned.full_name, deployment_id, planned.cron,
             planned.timezone, pool, planned.spec_path)
    return deployment_id


def serve_release(planned: ReleaseDeployment) -> None:
    """Serve the deployment from this process until interrupted: each run in a subprocess, one at a time."""
    ensure_limit(planned.dataset)
    release.serve(name=planned.name, schedule=planned.schedule(), parameters={"spec_path": planned.spec_path},
                  description=f"DP synthetic release of dataset `{planned.dataset}` from {planned.spec_path}.",
                  tags=["safesynth", f"dataset:{planned.dataset}"], limit=1,
                  entrypoint_type=EntrypointType.MODULE_PATH)
