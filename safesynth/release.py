"""The reference release pipeline: every stage in order, without Prefect.

The Prefect flow in ``flows/release.py`` runs the same stage functions as tasks; this module is what the
tests and library users call directly, and documents the order the flow must keep.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from safesynth import stages
from safesynth.errors import GateFailedError, SafeSynthError
from safesynth.privacy.noise import NoiseSource

log = logging.getLogger("safesynth")

__all__ = ["ReleaseOutcome", "render_summary", "run_release"]


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
) -> ReleaseOutcome:
    """Run one release end to end. Raises SafeSynthError subclasses for bad specs, data and budgets.

    A release blocked by a gate does not raise: it returns ``status="blocked"`` with the reasons, and
    nothing is written under the publish target.
    """
    ctx = stages.prepare(spec_path, release_id)
    spec = ctx.spec
    if stages.already_published(ctx) is not None:
        return ReleaseOutcome(release_id=ctx.release_id, dataset=spec.dataset, status="already_published",
                              message=f"release {ctx.release_id} is already published; nothing to do",
                              location=f"{spec.target_uri}/{spec.dataset}/{ctx.release_id}")
    reservation = stages.reserve_budget(ctx)
    status = "failed"
    try:
        raw = stages.ingest(ctx, reservation)
        clean, _ = stages.validate(ctx, raw)
        train, holdout = stages.split(ctx, clean)
        model = stages.fit(ctx, train, noise=noise)
        synthetic = stages.sample(ctx, model)
        files = stages.write_output(ctx, synthetic)
        attack = stages.audit(ctx, synthetic, train, holdout)
        decision = stages.gate(ctx, attack)
        if not decision.passed:
            status = "blocked"
            return _outcome(ctx, "blocked", GateFailedError(decision.reasons).args[0], exit_code=3)
        published = stages.publish(ctx, files, decision)
        status = "published"
        return _outcome(ctx, "published", f"published {spec.sampling.rows} rows to {published.location}",
                        location=published.location)
    finally:
        try:
            stages.settle(ctx, reservation, status=status)
        finally:
            stages.cleanup(ctx)


def _outcome(ctx: stages.RunContext, status: str, message: str, *, location: str | None = None,
             exit_code: int = 0) -> ReleaseOutcome:
    read = lambda name: json.loads(ctx.path(name).read_text()) if ctx.path(name).exists() else {}  # noqa: E731
    account = stages.load_account(ctx).summary() if ctx.path("account.json").exists() else {}
    return ReleaseOutcome(
        release_id=ctx.release_id, dataset=ctx.spec.dataset, status=status, message=message, location=location,
        privacy=account, audit=read("audit.json"), gate=read("gate.json"), exit_code=exit_code,
    )


def render_summary(outcome: ReleaseOutcome) -> str:
    """A markdown summary of a release for people (Prefect artifact, CLI report). No private values."""
    lines = [f"# Release `{outcome.release_id}`: {outcome.status}", "", outcome.message, ""]
    if outcome.privacy:
        p = outcome.privacy
        lines += [
            "## Privacy", "",
            "| epsilon | delta | accountant | epsilon (RDP) | epsilon (PLD) | epsilon (sum of stages) | secure noise |",
            "|---|---|---|---|---|---|---|",
            f"| {p['epsilon']:.4f} | {p['delta']:.2e} | {p['accountant']} | {p['epsilon_rdp']:.4f} | "
            f"{p['epsilon_pld']:.4f} | {p['epsilon_basic']:.4f} | {p['secure_noise']} |",
            "", "| stage | mechanism | epsilon | delta | secure noise |", "|---|---|---|---|---|",
        ]
        lines += [f"| {s['stage']} | {s['mechanism']} | {s['epsilon']:.4f} | {s['delta']:.2e} | {s['secure_noise']} |"
                  for s in p.get("stages", [])]
        lines.append("")
    if outcome.audit:
        a = outcome.audit
        lines += [
            "## Membership-inference audit", "",
            "| attack | AUC | AUC 95% upper | TPR at low FPR | FPR |", "|---|---|---|---|---|",
            f"| {a['attack']} | {a['auc']:.3f} | {a['auc_upper']:.3f} | {a['tpr_at_low_fpr']:.3f} | {a['low_fpr']:g} |",
            "",
        ]
    if outcome.gate:
        lines += ["## Gates", "", "| gate | passed | detail |", "|---|---|---|"]
        lines += [f"| {g['gate']} | {'yes' if g['passed'] else '**no**'} | {g['reason']} |"
                  for g in outcome.gate.get("gates", [])]
    return "\n".join(lines) + "\n"


def outcome_for_error(spec_path: str, release_id: str | None, exc: SafeSynthError) -> ReleaseOutcome:
    return ReleaseOutcome(release_id=release_id or "-", dataset="-", status="failed", message=str(exc),
                          exit_code=exc.exit_code)
