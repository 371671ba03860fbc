"""Prefect events at the end of a release, for automations to react to.

One event per release run of the flow, when it ends:

* ``safesynth.release.published``: the release is visible at its target;
* ``safesynth.release.blocked``: a gate blocked it; nothing was published;
* ``safesynth.release.failed``: it stopped with an error (bad spec or input, budget, a failing stage, a bug);
  nothing was published.

A rerun of a release id that is already published emits nothing: nothing new was published. The local
engine (``--engine local``) runs without Prefect and emits nothing.

Resource ``safesynth.dataset.<dataset>``; related resource ``safesynth.release.<dataset>.<release_id>``
(role ``release``; release ids are per dataset), besides the flow run and flow that Prefect adds.

Published zone only (see "Privacy guarantees" in README.md): the payload is built from the release's
outcome, the same values the flow's state, its summary artifact and the manifest carry, and nothing else
(:data:`PAYLOAD_KEYS`): the dataset, release id, status and exit code (spec constants and the decision),
the one-line message of the flow state, the (epsilon, delta) the accountant states and its name (as in the
manifest), each gate's name and pass/fail decision (as in the manifest and the artifact) and, once
published, the release's location. Never a row count, an exact audit figure, a data value or a path in
the restricted zone. An unexpected error (a bug) is named by its class only: its message could hold
anything.
"""

from __future__ import annotations

from typing import Any

from prefect.events import Event, emit_event

from safesynth.release import ReleaseOutcome

__all__ = ["PAYLOAD_KEYS", "emit_release_event", "internal_error_outcome", "release_event"]

EVENTS = {"published": "safesynth.release.published", "blocked": "safesynth.release.blocked",
          "failed": "safesynth.release.failed"}
#: Every key a release event's payload may hold; ``gates`` is a list of ``{"gate", "passed"}``.
PAYLOAD_KEYS = frozenset({"dataset", "release_id", "status", "exit_code", "message", "epsilon", "delta",
                          "accountant", "gates_passed", "gates", "location"})


def release_event(outcome: ReleaseOutcome) -> dict[str, Any] | None:
    """The event (``emit_event`` keyword arguments) that reports ``outcome``; None for already published."""
    name = EVENTS.get(outcome.status)
    if name is None:
        return None
    dataset = None if outcome.dataset == "-" else outcome.dataset
    release_id = None if outcome.release_id == "-" else outcome.release_id
    payload: dict[str, Any] = {"dataset": dataset, "release_id": release_id, "status": outcome.status,
                               "exit_code": outcome.exit_code, "message": outcome.message}
    if outcome.privacy:
        payload.update({k: outcome.privacy[k] for k in ("epsilon", "delta", "accountant")})
    if outcome.gate:
        payload["gates_passed"] = bool(outcome.gate["passed"])
        payload["gates"] = [{"gate": g["gate"], "passed": bool(g["passed"])} for g in outcome.gate["gates"]]
    if outcome.status == "published" and outcome.location is not None:
        payload["location"] = outcome.location
    resource = {"prefect.resource.id": f"safesynth.dataset.{dataset or 'unknown'}",
                "prefect.resource.name": dataset or "unknown"}
    related = [] if dataset is None or release_id is None else [
        {"prefect.resource.id": f"safesynth.release.{dataset}.{release_id}", "prefect.resource.role": "release",
         "prefect.resource.name": release_id}]
    return {"event": name, "resource": resource, "related": related, "payload": payload}


def emit_release_event(outcome: ReleaseOutcome) -> Event | None:
    """Emit :func:`release_event` of ``outcome`` to Prefect (the flow run's API); returns the event sent."""
    event = release_event(outcome)
    return None if event is None else emit_event(**event)


def internal_error_outcome(exc: BaseException) -> ReleaseOutcome:
    """The outcome of a release that raised an unexpected error: its class only, never its message."""
    return ReleaseOutcome(release_id=getattr(exc, "release_id", "-"), dataset=getattr(exc, "dataset", "-"),
                          status="failed", message=f"internal error ({exc.__class__.__name__})", exit_code=1)
