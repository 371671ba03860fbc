"""The release flow: ingest -> validate -> split -> fit (DP) -> sample -> write -> audit -> gate -> publish.

Runs on Prefect's embedded local API (SQLite) by default; no server needs starting. A release blocked by
a gate ends the flow **Failed** with the gate's reason; every run leaves a markdown artifact summary.
The same stage order is implemented without Prefect in :func:`safesynth.release.run_release`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed

from safesynth.errors import SafeSynthError
from safesynth.release import ReleaseOutcome, _outcome, render_summary
from tasks import release as t


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
    ctx = t.prepare(spec_path, release_id)
    logger.info("release %s of dataset %s", ctx.release_id, ctx.spec.dataset)
    if t.already_published(ctx):
        outcome = ReleaseOutcome(release_id=ctx.release_id, dataset=ctx.spec.dataset, status="already_published",
                                 message=f"release {ctx.release_id} is already published; nothing to do")
        _artifact(outcome)
        return Completed(message=outcome.message, data=outcome)
    reservation = t.reserve_budget(ctx)
    status = "failed"
    try:
        raw = t.ingest(ctx, reservation)
        clean, _ = t.validate(ctx, raw)
        train, holdout = t.split(ctx, clean)
        model = t.fit(ctx, train)
        synthetic = t.sample(ctx, model)
        files = t.write_output(ctx, synthetic)
        attack = t.audit(ctx, synthetic, train, holdout)
        decision = t.gate(ctx, attack)
        if not decision.passed:
            status = "blocked"
            outcome = _outcome(ctx, "blocked", "release blocked: " + "; ".join(decision.reasons), exit_code=3)
            _artifact(outcome)
            logger.error(outcome.message)
            return Failed(message=outcome.message, data=outcome)
        published = t.publish(ctx, files, decision)
        status = "published"
        outcome = _outcome(ctx, "published", f"published {ctx.spec.sampling.rows} rows to {published.location}",
                           location=published.location)
        _artifact(outcome)
        logger.info(outcome.message)
        return Completed(message=outcome.message, data=outcome)
    except SafeSynthError as exc:
        _artifact(ReleaseOutcome(release_id=ctx.release_id, dataset=ctx.spec.dataset, status="failed",
                                 message=str(exc), exit_code=exc.exit_code))
        raise
    finally:
        try:
            t.settle(ctx, reservation, status)
        finally:
            t.cleanup(ctx)


if __name__ == "__main__":  # pragma: no cover - `python flows/release.py SPEC`
    import sys

    release(sys.argv[1])
