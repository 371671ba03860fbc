"""The release pipeline: the one place that knows the order of the stages.

:func:`run_release` calls every stage of :mod:`safesynth.stages` in order through a *runner*: by default
:func:`direct` (a plain call: the whole product runs without Prefect); the Prefect flow in
``flows/release.py`` passes a runner that wraps each stage in its task, and benchmarks call the same
function. Inject the runner the way httpx injects a transport.

Ordering guarantees:
  * checks that need no private data run before the budget is reserved (``prepare``);
  * the DP audit and the gate run before the Parquet files are written, so the files' metadata states
    the release's whole spend, audit included;
  * the ledger records the outcome after publishing; if it cannot, the outcome is kept durably and
    recorded by the next run, and a release that is visible is reported as published, never as failed;
  * the private work directory is removed on every exit path, or quarantined (restricted, for a set
    retention) after a blocked or failed release that read data (:meth:`safesynth.workspace.Workspace.finish`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from safesynth import stages
from safesynth.errors import AlreadyPublishedError, GateFailedError, SafeSynthError
from safesynth.privacy.noise import NoiseSource
from safesynth.spec import ReleaseSpec

log = logging.getLogger("safesynth")

__all__ = ["ReleaseOutcome", "Runner", "direct", "outcome_for_error", "render_summary", "run_release"]

T = TypeVar("T")


class Runner(Protocol):
    """Runs one stage: ``run(name, function, *args, **kwargs)`` returns what ``function`` returns."""

    def __call__(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...


def direct(name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """The default runner: call the stage in this process."""
    del name
    return fn(*args, **kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseOutcome:
    """What happened to one release. ``status``: published, already_published, blocked or failed."""

    release_id: str
    dataset: str
    status: str
    message: str
    location: str | None = None
    privacy: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0


def run_release(
    spec_path: str | os.PathLike[str],
    *,
    release_id: str | None = None,
    noise: NoiseSource | None = None,
    run: Runner = direct,
    once: bool = False,
    spec: ReleaseSpec | None = None,
) -> ReleaseOutcome:
    """Run one release end to end. Raises SafeSynthError subclasses for bad specs, data and budgets.

    ``once``: the release id is a scheduled slot's, which runs once. If an earlier attempt of it read data
    and ended blocked or failed, this run spends nothing and ends with that status again (a new release
    needs a new id); without ``once`` such an id is attempted again, spending again.

    ``spec``: the spec the caller already loaded from ``spec_path`` (it is then not read again).

    A release blocked by a gate does not raise: it returns ``status="blocked"`` with the reasons, and
    nothing is written under the publish target. An error raised after :func:`stages.prepare` carries
    ``release_id`` and ``dataset`` attributes (spec constants: callers report them).
    """
    ctx = run("prepare", stages.prepare, str(spec_path), release_id, spec)
    status = "failed"
    try:
        outcome = _run_prepared(ctx, noise=noise, run=run, once=once)
        status = outcome.status
        return outcome
    except Exception as exc:
        with contextlib.suppress(AttributeError):  # an exception type with __slots__ takes none
            exc.release_id, exc.dataset = ctx.release_id, ctx.spec.dataset  # type: ignore[attr-defined]
        raise
    finally:
        run("cleanup", stages.cleanup, ctx, status=status)


def _run_prepared(ctx: stages.RunContext, *, noise: NoiseSource | None, run: Runner, once: bool) -> ReleaseOutcome:
    location = run("check-published", stages.already_published, ctx)
    if location is not None:
        return ReleaseOutcome(release_id=ctx.release_id, dataset=ctx.spec.dataset, status="already_published",
                              message=f"release {ctx.release_id} is already published; nothing to do",
                              location=location)
    if once:
        earlier = run("check-slot", stages.spent_attempt, ctx)
        if earlier is not None:
            return ReleaseOutcome(
                release_id=ctx.release_id, dataset=ctx.spec.dataset, status=earlier.status,
                exit_code=3 if earlier.status == "blocked" else 1,
                message=f"release {ctx.release_id} (a scheduled slot) already ran and was {earlier.status} after "
                        "reading data; a slot runs once, so nothing was spent again: run a new release with an "
                        "explicit release id")
    try:
        reservation = run("reserve-budget", stages.reserve_budget, ctx)
    except AlreadyPublishedError as exc:  # the ledger knows it although the target shows nothing
        return ReleaseOutcome(release_id=ctx.release_id, dataset=ctx.spec.dataset, status="already_published",
                              message=str(exc))
    status = "failed"
    stages.prewarm_sampling(ctx)  # worker imports overlap ingest, validation and the fit
    try:
        raw = run("ingest", stages.ingest, ctx, reservation)
        clean = run("validate", stages.validate, ctx, raw)
        train, holdout = run("split-holdout", stages.split, ctx, clean)
        fit_rows = run("insert-canaries", stages.insert_canaries, ctx, train)  # canary mode; else `train`
        fitted = run("fit-dp-generator", stages.fit, ctx, fit_rows, noise=noise)
        synthetic = run("sample", stages.sample, ctx, fitted)
        audit = run("audit", stages.audit, ctx, fitted, synthetic, train, holdout, noise=noise)
        decision = run("gate", stages.gate, ctx, audit)
        if not decision.passed:
            status = "blocked"
            return _outcome(ctx, "blocked", GateFailedError(decision.reasons).args[0], exit_code=3)
        files = run("write-parquet", stages.write_output, ctx, fitted, synthetic)
        published = run("publish", stages.publish, ctx, fitted, files, decision)
        status = "published"
    except BaseException:
        if status == "failed" and stages.is_published(ctx):  # the error came after the release became visible
            status = "published"
            log.warning("release %s is visible at its target although publishing reported an error",
                        ctx.release_id)
            return _published(ctx, stages.release_location(ctx))
        raise
    finally:
        run("settle-budget", stages.settle, ctx, reservation, status=status)
    return _published(ctx, published.location, rows=fitted.schema.spec.sampling.rows)


def _published(ctx: stages.RunContext, location: str, *, rows: int | None = None) -> ReleaseOutcome:
    # ``rows``: what the fitted spec samples (an ``incontext`` generator may have bought fewer than asked).
    asked = ctx.spec.sampling.rows
    shown = asked if rows is None else rows
    bought = "" if shown >= asked else f" (the generator's budget bought {shown} of the {asked} asked for)"
    return _outcome(ctx, "published", f"published {shown} rows{bought} to {location}", location=location)


def _outcome(ctx: stages.RunContext, status: str, message: str, *, location: str | None = None,
             exit_code: int = 0) -> ReleaseOutcome:

    def read(name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ctx.report(name).read_text()) if ctx.report(name).exists() else {}
        return data

    account = stages.load_account(ctx).summary() if ctx.report("account.json").exists() else {}
    return ReleaseOutcome(
        release_id=ctx.release_id, dataset=ctx.spec.dataset, status=status, message=message, location=location,
        privacy=account, audit=read("audit_dp.json"), gate=read("gate.json"), exit_code=exit_code,
    )


def outcome_for_error(exc: SafeSynthError) -> ReleaseOutcome:
    """The outcome of a release that raised: one line, its exit code, no figures."""
    return ReleaseOutcome(release_id=getattr(exc, "release_id", "-"), dataset=getattr(exc, "dataset", "-"),
                          status="failed", message=str(exc), exit_code=exc.exit_code)


def _figure(epsilon: float | None) -> str:
    """An accountant's epsilon, or "n/a" where it cannot compose the release's events (PLD and zCDP)."""
    return "n/a" if epsilon is None else f"{epsilon:.4f}"


def render_summary(outcome: ReleaseOutcome) -> str:
    """A markdown summary of a release for people (Prefect artifact, CLI report). No private values."""
    lines = [f"# Release `{outcome.release_id}`: {outcome.status}", "", outcome.message, ""]
    if outcome.privacy:
        p = outcome.privacy
        lines += [
            "## Privacy", "",
            "| epsilon | delta | accountant | epsilon (RDP) | epsilon (PLD) | epsilon (sum of stages) | secure noise |",
            "|---|---|---|---|---|---|---|",
            f"| {p['epsilon']:.4f} | {p['delta']:.2e} | {p['accountant']} | {_figure(p['epsilon_rdp'])} | "
            f"{_figure(p['epsilon_pld'])} | {p['epsilon_basic']:.4f} | {p['secure_noise']} |",
            "", "| stage | mechanism | epsilon | delta | secure noise |", "|---|---|---|---|---|",
        ]
        lines += [f"| {s['stage']} | {s['mechanism']} | {s['epsilon']:.4f} | {s['delta']:.2e} | {s['secure_noise']} |"
                  for s in p.get("stages", [])]
        lines.append("")
    if outcome.audit:
        a = outcome.audit
        noisy = "-" if a["noisy_auc"] is None else f"{a['noisy_auc']:.3f}"
        lines += [
            "## Membership-inference audit (differentially private)", "",
            "| attack | noisy AUC | 95% upper bound | AUC bound of the claimed epsilon | rows per side (DP) | epsilon |",
            "|---|---|---|---|---|---|",
            f"| {a['attack']} | {noisy} | {a['auc_upper']:.3f} | {a.get('auc_bound', 1.0):.3f} | {a['rows_per_side']} | "
            f"{a['epsilon']:.4f} |",
            "",
        ]
        if a.get("utility"):
            lines += ["| utility figure (DP) | noisy value | 95% lower | 95% upper |", "|---|---|---|---|"]
            lines += [f"| {f['figure']} | {'-' if f['value'] is None else format(f['value'], '.3f')} | "
                      f"{f['lower']:.3f} | {f['upper']:.3f} |" for f in a["utility"]]
            lines.append("")
    if outcome.gate:
        lines += ["## Gates", "", "| gate | passed | detail |", "|---|---|---|"]
        lines += [f"| {g['gate']} | {'yes' if g['passed'] else '**no**'} | {g['reason']} |"
                  for g in outcome.gate.get("gates", [])]
    return "\n".join(lines) + "\n"
