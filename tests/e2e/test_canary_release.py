"""Canary mode through a real release: canaries are fitted by secret coins, never audited as members, and
their empirical lower bound on epsilon is reported next to the claim and gated on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safesynth.release import run_release
from tests.helpers import MIXED_COLUMNS, mixed_frame

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("shared_dask")]

ROWS = 1500
CANARIES = 200


def _spec(tmp_path: Path, **audit: object) -> Path:  # a small table: a loose AUC gate (k is ~100)
    mixed_frame(ROWS, seed=1).to_parquet(tmp_path / "data.parquet", index=False)
    spec = {
        "dataset": "canary", "source": "data.parquet", "columns": MIXED_COLUMNS,
        "privacy": {"epsilon": 2.0, "delta": 1e-6, "lifetime_epsilon": 100.0},
        "generator": {"kind": "marginals"}, "sampling": {"rows": 1000, "seed": 0},
        "audit": {"canaries": CANARIES, "max_attack_auc": 0.95, **audit}, "publish": {"target": "releases"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _reports(home: Path, release_id: str) -> Path:
    return next((home / "reports" / "canary" / release_id).iterdir())


def test_a_canary_release_reports_its_empirical_epsilon_and_audits_real_members_only(tmp_path, safesynth_home):
    outcome = run_release(_spec(tmp_path), release_id="c1")
    assert outcome.status == "published", outcome.message
    assert outcome.audit["empirical_epsilon"] is not None
    assert 0.0 <= outcome.audit["empirical_epsilon"] <= outcome.audit["claimed_epsilon"]
    assert any(g["gate"] == "canary-epsilon" and g["passed"] for g in outcome.gate["gates"])
    reports = _reports(Path(safesynth_home), "c1")
    canary = json.loads((reports / "canary.json").read_text())
    assert canary["canaries"] == CANARIES and 0 < canary["included"] < CANARIES
    exact = json.loads((reports / "audit.json").read_text())
    assert exact["train_rows"] + exact["holdout_rows"] == ROWS  # the canaries are no members
    report = json.loads((reports / "audit_report" / "audit_report.json").read_text())
    assert report["empirical_epsilon"] == outcome.audit["empirical_epsilon"]


def test_canary_mode_needs_declared_domains(tmp_path, safesynth_home):
    from safesynth.errors import SpecError

    path = _spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["columns"] = {**MIXED_COLUMNS, "age": {"type": "integer"}}
    data["privacy"]["allocation"] = {"discovery": 0.1}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match="canaries"):
        run_release(path, release_id="c2")
