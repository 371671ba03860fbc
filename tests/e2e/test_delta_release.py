"""End to end: the Prefect release flow publishing into a Delta table, then `safesynth releases`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from safesynth.spec import load_spec
from tests.conftest import REPO
from tests.e2e.test_release_flow import EXACT_AUDIT_KEYS, run_cli, run_flow, walk
from tests.helpers import rows_valid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def delta_spec(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data["source"] = str((REPO / "data" / data["source"]).resolve())
    data["publish"] = {"format": "delta", "target": str(tmp_path / "table")}
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def test_flow_publishes_one_delta_commit_with_the_privacy_metadata(tmp_path, safesynth_home, prefect_harness):
    from deltalake import DeltaTable

    spec_path = delta_spec(tmp_path)
    spec = load_spec(spec_path)
    state = run_flow(spec_path, "demo-delta")
    assert state.is_completed(), state.message
    assert state.result().location == str(tmp_path / "table")
    table = DeltaTable(str(tmp_path / "table"))
    [commit] = [c for c in table.history() if "safesynth.release_id" in c]
    assert commit["safesynth.release_id"] == "demo-delta" and commit["safesynth.dataset"] == "demo"
    manifest = json.loads(commit["safesynth.manifest"])
    assert manifest["spec_digest"] == spec.digest() == commit["safesynth.spec_digest"]
    assert float(commit["safesynth.epsilon"]) == manifest["privacy"]["epsilon"] <= spec.privacy.epsilon
    assert manifest["gate"]["passed"] and manifest["audit"]["differentially_private"] is True
    # Published-zone values only: no exact audit figure, no exact size of the private tables.
    ours = {k: v for k, v in commit.items() if k.startswith("safesynth.")}
    assert not set(map(str, walk(manifest))) & EXACT_AUDIT_KEYS
    reports = Path(os.environ["SAFESYNTH_HOME"]) / "reports" / spec.dataset / "demo-delta"
    (restricted,) = reports.glob("*/audit.json")
    exact = json.loads(restricted.read_text())
    assert repr(exact["exact"]["auc"]) not in json.dumps(ours)
    assert not {exact["train_rows"], exact["holdout_rows"]} & set(walk([manifest["audit"], manifest["gate"]]))
    frame = table.to_pandas(filters=[("release_id", "=", "demo-delta")])
    assert len(frame) == spec.sampling.rows
    assert rows_valid(frame.drop(columns="release_id"), spec)
    # Same release id again: nothing spent, no second commit.
    again = run_flow(spec_path, "demo-delta")
    assert again.is_completed() and again.result().status == "already_published"
    assert DeltaTable(str(tmp_path / "table")).version() == table.version()
    shown = run_cli("releases", "show", str(tmp_path / "table"), "demo", "--format", "delta", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["release_id"] == "demo-delta"
