"""The audit and gate stages: planned and charged, and exact figures only in the restricted zone.

What is published (manifest, Parquet metadata, logs, the run summary) carries the DP audit's noisy
figures and spec constants; the exact AUC, TPR and sizes stay in the attempt's reports directory.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from safesynth import stages
from safesynth.output import read_release_metadata
from safesynth.privacy import ReleaseAccount, plan_budget
from safesynth.release import ReleaseOutcome, render_summary
from safesynth.workspace import Workspace
from tests.helpers import as_sampled, make_spec, mixed_frame

EXACT_KEYS = {"members", "non_members", "tpr_at_low_fpr", "tpr_upper", "train_rows", "holdout_rows", "noisy_count",
              "slot_auc", "exact", "padded_members", "padded_non_members"}


class ScriptedNoise:
    """Count offset 0, AUC offset +0.2: keeps the noisy figures apart from the exact ones. Not random."""

    secure = False

    def __init__(self) -> None:
        self.offsets = [0.0, 0.2]

    def laplace(self, values, *, scale, discrete=False):
        return np.asarray(values, dtype=float) + self.offsets.pop(0)

    def gaussian(self, values, *, scale, discrete=False):
        raise AssertionError("the audit uses the Laplace mechanism only")


def keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


@pytest.fixture
def audited(tmp_path, safesynth_home, caplog):
    spec = make_spec(tmp_path, audit={"max_attack_auc": 0.9})
    ctx = stages.RunContext(spec=spec, spec_path=str(tmp_path / "spec.yaml"), release_id="r1",
                            workspace=Workspace.create(spec.dataset, "r1"))
    stages.save_account(ctx, ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant))
    paths = {}
    for name, frame in {"synthetic": mixed_frame(500, seed=3), "train": mixed_frame(1700, seed=1),
                        "holdout": mixed_frame(650, seed=2)}.items():
        paths[name] = ctx.path(f"{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    paths["synthetic"] = as_sampled(mixed_frame(500, seed=3), spec, ctx.path("parts/part-00000.parquet"))
    fitted = stages.Fitted(model_dir=ctx.path("model"), schema=stages.ResolvedSpec(spec))
    with caplog.at_level(logging.INFO, logger="safesynth"):
        published = stages.audit(ctx, fitted, paths["synthetic"], paths["train"], paths["holdout"],
                                 noise=ScriptedNoise())
        decision = stages.gate(ctx, published)
    return ctx, fitted, paths, published, decision, caplog


def test_the_audit_stage_is_planned_and_charged(audited):
    ctx, _, _, published, _, _ = audited
    stage = plan_budget(ctx.spec).stage("audit")
    spends = stages.load_account(ctx).spends
    assert [s.stage for s in spends] == ["audit.count", "audit.auc"]
    assert math.fsum(s.epsilon for s in spends) <= stage.epsilon
    assert published.epsilon == pytest.approx(stage.epsilon)


def test_exact_figures_go_to_the_restricted_reports_only(audited):
    ctx, _, _, published, decision, caplog = audited
    exact = json.loads(ctx.report("audit.json").read_text())
    assert exact["zone"] == "restricted" and (exact["train_rows"], exact["holdout_rows"]) == (1700, 650)
    assert Path(ctx.workspace.reports).stat().st_mode & 0o777 == 0o700
    assert json.loads(ctx.report("audit_dp.json").read_text()) == published.to_dict()
    assert published.noisy_auc == pytest.approx(exact["slot_auc"] + 0.2)
    assert decision.passed is (published.auc_upper <= 0.9)
    assert decision.gates[0].figure == published.auc_upper  # the gate read the DP bound
    records = caplog.get_records("setup")  # the stages ran in the fixture
    logs = "\n".join(r.getMessage() for r in records)
    assert "noisy AUC" in logs and f"{published.noisy_auc:.3f}" in logs
    for secret in (f"{exact['exact']['auc']:.3f}", "1700", "650", f"{exact['noisy_count']:.1f}"):
        assert not re.search(rf"(?<![\d.]){re.escape(secret)}(?![\d])", logs), secret
    assert all("\n" not in r.getMessage() for r in records)  # one line each


def test_manifest_parquet_metadata_and_summary_carry_noisy_figures_only(audited):
    ctx, fitted, paths, published, decision, _ = audited
    ctx.report("plan.json").write_text(json.dumps(plan_budget(ctx.spec).to_dict()))
    ctx.report("validation.json").write_text(json.dumps({"summary": {"suite": "unit"}, "exact": {"passed": 1}}))
    files = stages.write_output(ctx, fitted, paths["synthetic"])
    meta = read_release_metadata(files[0])
    assert json.loads(meta["audit"]) == published.to_dict()
    assert json.loads(meta["gate"]) == decision.to_dict()
    assert {s["stage"] for s in json.loads(meta["stages"])} == {"audit.count", "audit.auc"}
    manifest = stages.build_manifest(ctx, fitted, files, decision)
    assert manifest["audit"] == published.to_dict() and manifest["audit"]["differentially_private"] is True
    assert {"audit.count", "audit.auc"} <= {s["stage"] for s in manifest["privacy"]["stages"]}
    assert not keys(manifest) & EXACT_KEYS
    assert not keys({k: json.loads(v) if v[:1] in "[{" else v for k, v in meta.items()}) & EXACT_KEYS
    exact = json.loads(ctx.report("audit.json").read_text())
    assert repr(exact["exact"]["auc"]) not in json.dumps(manifest) + json.dumps(meta)
    summary = render_summary(ReleaseOutcome(release_id="r1", dataset="unit", status="published", message="ok",
                                            privacy=stages.load_account(ctx).summary(), audit=published.to_dict(),
                                            gate=decision.to_dict()))
    assert "noisy AUC" in summary and f"{published.noisy_auc:.3f}" in summary
    assert "TPR" not in summary and f"{exact['exact']['auc']:.3f}" not in summary


def test_the_owners_report_is_restricted_and_its_figures_stay_out_of_the_logs(audited):
    ctx, _, _, published, _, caplog = audited
    reports = Path(ctx.workspace.reports)
    report = json.loads((reports / "audit_report" / "audit_report.json").read_text())
    assert (reports / "audit_report" / "audit_report.html").exists()
    assert (reports / "audit_report").stat().st_mode & 0o777 == 0o700
    assert json.loads((reports / "audit_report_status.json").read_text())["written"] is True
    assert {a["attack"] for a in report["attacks"]} == set(ctx.spec.audit.attacks)
    logs = "\n".join(r.getMessage() for r in caplog.get_records("setup"))
    for figure in (published.noisy_auc, published.auc_upper, published.auc_lower, published.auc_bound):
        logs = logs.replace(f"{figure:.3f}", "")  # the published (DP) figures and the threshold may be logged
    for attack in report["attacks"]:  # the exact (real-reference) AUCs never reach a published channel
        assert f"{attack['auc']:.3f}" not in logs.replace("0.900", "")
    assert "could not" not in logs
