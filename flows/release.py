"""The release flow: :func:`safesynth.release.run_release` with every stage run as a Prefect task.

Runs on Prefect's embedded local API (SQLite) by default; no server needs starting. The stage order lives
in ``run_release`` alone. A blocked or failed release ends the flow **Failed** with one line; every run
leaves a markdown artifact summary and emits one Prefect event, ``safesynth.release.published``,
``.blocked`` or ``.failed`` (published-zone fields only, see ``flows/events.py``). Expected errors (:class:`~safesynth.errors.SafeSynthError`) are
logged as one line, without the traceback Prefect's engines would add; bugs keep their traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed
from safesynth.flows.events import emit_release_event, internal_error_outcome
from safesynth.tasks.release import run_as_task

from safesynth.errors import SafeSynthError
from safesynth.release import ReleaseOutcome, outcome_for_error, render_summary, run_release


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


@flow(name="safesynth-release", log_prints=False, validate_parameters=True)
def release(spec_path: str, release_id: str | None = None) -> Any:
    """Run one DP synthetic release from the spec at ``spec_path``.

    Privacy numbers come from the spec file only; they are not flow parameters, so they cannot be
    changed from the UI.
    """
    logger = get_run_logger()
    try:
        outcome = run_release(spec_path, release_id=release_id, run=run_as_task)
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
