"""The release flow: :func:`safesynth.release.run_release` with every stage run as a Prefect task.

Runs on Prefect's embedded local API (SQLite) by default; no server needs starting. The stage order lives
in ``run_release`` alone. One release of a dataset runs at a time (:mod:`safesynth.flows.limits`).

Release ids (:func:`planned_release_id`): an explicit ``release_id`` wins; a run of a deployment takes the
id of its scheduled slot (``demo-2026-12-07T02-00Z``), so re-running that slot, or retrying its flow run,
finds the release already published and spends nothing again; any other run takes
``<dataset>-<time>-<flow run id>``, stable across retries of that flow run. Flow runs are named after the
dataset and the release id. A blocked or failed release ends the flow **Failed** with one line; every run
leaves a markdown artifact summary and emits one Prefect event, ``safesynth.release.published``,
``.blocked`` or ``.failed`` (published-zone fields only, see ``flows/events.py``). Expected errors
(:class:`~safesynth.errors.SafeSynthError`) are logged as one line, without the traceback Prefect's engines would add; bugs keep their traceback.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed
from safesynth.flows.events import emit_release_event, internal_error_outcome
from safesynth.flows.limits import one_release_at_a_time
from safesynth.tasks.release import run_as_task

from safesynth.errors import SafeSynthError
from safesynth.release import ReleaseOutcome, outcome_for_error, render_summary, run_release
from safesynth.spec import load_spec
from safesynth.stages import slot_release_id


class _OneLineForExpectedErrors(logging.Filter):
    """Drop the traceback from Prefect's engine logs when the exception is a SafeSynthError."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SafeSynthError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    if not any(isinstance(f, _OneLineForExpectedErrors) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_OneLineForExpectedErrors())


def _artifact(outcome: ReleaseOutcome) -> None:
    create_markdown_artifact(key="release-summary", markdown=render_summary(outcome),
                             description=f"safesynth release {outcome.release_id}: {outcome.status}")


def release_id_for(dataset: str, release_id: str | None, *, run_id: str | None, scheduled: dt.datetime | None,
                   from_deployment: bool) -> str | None:
    """The release id of a flow run: ``release_id`` if given, else its deployment slot's, else its own.

    ``None`` outside a flow run (``run_release`` then draws a fresh id). Uses public values only: the
    schedule's slot, the flow run's id and its expected start time.
    """
    if release_id is not None or run_id is None or scheduled is None:
        return release_id
    if from_deployment:
        return slot_release_id(dataset, scheduled)
    return f"{dataset}-{scheduled.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{run_id.replace('-', '')[:6]}"


def planned_release_id(dataset: str, release_id: str | None) -> str | None:
    """:func:`release_id_for` the current flow run, read from Prefect's runtime context."""
    run_id = flow_run.get_id()
    if run_id is None:
        return release_id
    return release_id_for(dataset, release_id, run_id=run_id, scheduled=flow_run.get_scheduled_start_time(),
                          from_deployment=deployment.get_id() is not None)


def run_name() -> str:
    """The flow run's name: its release id, prefixed with the dataset where the id does not start with it."""
    parameters = flow_run.get_parameters()
    spec_path = str(parameters.get("spec_path", ""))
    try:
        dataset = load_spec(spec_path).dataset
        release_id = planned_release_id(dataset, parameters.get("release_id"))
    except SafeSynthError:  # the flow fails with the reason; the name only says which spec
        return f"{Path(spec_path).stem or 'release'}-invalid-spec"
    if release_id is None:  # pragma: no cover - Prefect names runs inside a flow run only
        return dataset
    return release_id if release_id.startswith(f"{dataset}-") else f"{dataset}-{release_id}"


@flow(name="safesynth-release", flow_run_name=run_name, log_prints=False, validate_parameters=True)
def release(spec_path: str, release_id: str | None = None) -> Any:
    """Run one DP synthetic release from the spec at ``spec_path``.

    Privacy numbers come from the spec file only; they are not flow parameters, so they cannot be
    changed from the UI. Holds the dataset's concurrency slot for the whole release.
    """
    logger = get_run_logger()
    try:
        # Loaded once, here: its dataset names the slot, and `prepare` checks this same spec.
        loaded = load_spec(spec_path)
        dataset = loaded.dataset
        planned = planned_release_id(dataset, release_id)
        if release_id is None and planned is not None and deployment.get_id() is not None:
            logger.info("release id %s: from the scheduled slot %s", planned,
                        flow_run.get_scheduled_start_time().astimezone(dt.UTC).isoformat())
        with one_release_at_a_time(dataset):
            from_slot = release_id is None and planned is not None and deployment.get_id() is not None
            outcome = run_release(spec_path, release_id=planned, run=run_as_task, once=from_slot,
                                  spec=loaded)
    except SafeSynthError as exc:
        outcome = outcome_for_error(exc)
    except Exception as exc:  # a bug: the flow still fails with its traceback, after the event
        emit_release_event(internal_error_outcome(exc))
        raise
    _artifact(outcome)
    emit_release_event(outcome)
    if outcome.exit_code:
        logger.error(outcome.message)
        return Failed(message=outcome.message, data=outcome)
    logger.info(outcome.message)
    return Completed(message=outcome.message, data=outcome)


if __name__ == "__main__":  # pragma: no cover - `python flows/release.py SPEC`
    import sys

    release(sys.argv[1])
