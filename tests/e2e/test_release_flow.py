"""End to end: the Prefect release flow and the CLI on the demo data and on Adult rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from safesynth.flows.cli import app
from typer.testing import CliRunner

from safesynth.output import read_release_metadata
from safesynth.spec import load_spec
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import rows_valid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def spec_copy(tmp_path: Path, base: Path, **changes) -> Path:
    """The spec at ``base`` with an absolute source, a target in tmp_path, and ``changes`` merged in."""
    data = yaml.safe_load(base.read_text())
    data["source"] = str((base.parent / data["source"]).resolve())
    data["publish"] = {**data.get("publish", {}), "target": str(tmp_path / "releases")}
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_cli(*args: str):
    """In-process CLI; only for the local engine (Prefect's log handlers outlive CliRunner's streams)."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def run_cli_process(*args: str) -> subprocess.CompletedProcess:
    """The installed `safesynth` command in a real process, as a user runs it."""
    exe = Path(sys.executable).with_name("safesynth")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())


def run_flow(spec: Path, release_id: str):
    from safesynth.flows.release import release

    return release(str(spec), release_id, return_state=True)


def published_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "releases"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


EXACT_AUDIT_KEYS = {"members", "non_members", "tpr_at_low_fpr", "tpr_upper", "train_rows", "holdout_rows",
                    "slot_auc", "exact", "padded_members", "padded_non_members"}


def walk(value) -> list:
    """Every key and leaf value of a JSON document."""
    if isinstance(value, dict):
        return [*value, *(x for v in value.values() for x in walk(v))]
    if isinstance(value, list):
        return [x for v in value for x in walk(v)]
    return [value]


def check_audit_published_noisy_only(spec, release_id: str, manifest: dict, meta: dict) -> None:
    """The manifest and Parquet metadata carry the DP audit's figures and its spend, never the exact ones."""
    assert manifest["audit"]["differentially_private"] is True
    stages = {s["stage"]: s for s in manifest["privacy"]["stages"]}
    assert {"audit.count", "audit.auc"} <= set(stages)
    assert sum(stages[s]["epsilon"] for s in ("audit.count", "audit.auc")) <= \
        spec.privacy.allocation.audit * spec.privacy.epsilon + 1e-12
    assert json.loads(meta["audit"]) == manifest["audit"]
    published = {"manifest": manifest, "meta": {k: json.loads(v) if v[:1] in "[{" else v for k, v in meta.items()}}
    # (`noisy_count` is not listed: the repairs stage publishes its DP count under that name.)
    assert not set(map(str, walk(published))) & EXACT_AUDIT_KEYS
    reports = Path(os.environ["SAFESYNTH_HOME"]) / "reports" / spec.dataset / release_id
    (restricted,) = reports.glob("*/audit.json")  # the exact figures: the restricted zone only
    exact = json.loads(restricted.read_text())
    assert repr(exact["exact"]["auc"]) not in json.dumps(published)
    audit_values = walk([manifest["audit"], manifest["gate"], published["meta"]["audit"]])
    for size in (exact["train_rows"], exact["holdout_rows"]):  # k, the rows per side, is a DP output
        assert size not in audit_values


def check_release(tmp_path: Path, spec_path: Path, release_id: str) -> dict:
    spec = load_spec(spec_path)
    final = tmp_path / "releases" / spec.dataset / release_id
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["release_id"] == release_id and manifest["gate"]["passed"]
    assert manifest["privacy"]["epsilon"] <= spec.privacy.epsilon
    assert manifest["privacy"]["secure_noise"] is (spec.generator.kind == "marginals")
    parts = sorted(final.glob("part-*.parquet"))
    assert [f["path"] for f in manifest["files"]] == [p.name for p in parts]
    schema = pq.read_schema(parts[0])
    assert schema.names == list(spec.columns)
    meta = read_release_metadata(parts[0])
    assert meta["dataset"] == spec.dataset and meta["release_id"] == release_id
    assert meta["spec_digest"] == spec.digest() == manifest["spec_digest"]
    assert float(meta["epsilon"]) <= spec.privacy.epsilon and float(meta["delta"]) == spec.privacy.delta
    assert float(meta["epsilon"]) == manifest["privacy"]["epsilon"]  # the files state the audit's spend too
    assert {"generator", "version", "created_at", "accountant"} <= set(meta)
    # A caveat next to epsilon exactly when some noise is not from a secure sampler (DP-SGD).
    assert ("guarantee" in manifest["privacy"]) is (spec.generator.kind != "marginals")
    assert json.loads(meta["privacy"]).get("guarantee") == manifest["privacy"].get("guarantee")
    check_audit_published_noisy_only(spec, release_id, manifest, meta)
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert len(frame) == spec.sampling.rows
    assert rows_valid(frame, spec)  # 100% of rows satisfy the declared schema
    return manifest


def sampling_progress(flow_run_id) -> list[float]:
    """The final values of the flow run's sampling progress artifacts, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["sampling-progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return [float(a.data) for a in artifacts]


def flow_run_name(flow_run_id) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def test_flow_publishes_the_demo_release(tmp_path, safesynth_home, prefect_harness):
    spec = spec_copy(tmp_path, REPO / "data" / "demo.yaml")
    state = run_flow(spec, "demo-e2e")
    assert state.is_completed(), state.message
    outcome = state.result()
    assert outcome.status == "published" and outcome.exit_code == 0
    manifest = check_release(tmp_path, spec, "demo-e2e")
    assert "element_count" not in json.dumps(manifest["validation"])  # no private row counts
    assert manifest["validation"]["records_repaired_or_dropped"]["sensitivity"] == 1  # a DP count only
    assert "repairs" in [s["stage"] for s in manifest["privacy"]["stages"]]
    assert sampling_progress(state.state_details.flow_run_id) == [100.0]  # the shards' progress artifact
    assert flow_run_name(state.state_details.flow_run_id) == "demo-e2e"  # the dataset and the release id
    # Same release id again: idempotent, nothing spent, nothing rewritten.
    before = {p: p.read_bytes() for p in published_files(tmp_path)}
    again = run_flow(spec, "demo-e2e")
    assert again.is_completed() and again.result().status == "already_published"
    assert {p: p.read_bytes() for p in published_files(tmp_path)} == before


def test_flow_on_adult_rows(tmp_path, safesynth_home, prefect_harness):
    rows = pd.read_csv(SHARED_DATA / "adult.csv", nrows=4000, dtype=str, keep_default_na=False)
    source = tmp_path / "adult_4000.csv"
    rows.to_csv(source, index=False)
    spec = spec_copy(tmp_path, REPO / "data" / "adult.yaml", source=str(source),
                     sampling={"rows": 3000, "seed": 1})
    state = run_flow(spec, "adult-e2e")
    assert state.is_completed(), state.message
    check_release(tmp_path, spec, "adult-e2e")


def test_gate_blocks_with_exit_code_3_and_publishes_nothing(tmp_path, safesynth_home, prefect_harness):
    # A tiny audit share leaves no rows per side after the DP count (or a huge noise): the DP bound is
    # (near) vacuous, so a threshold of 0.5 blocks in all but ~1e-4 of runs (the attack's own AUC is ~0.5,
    # which a DP bound cannot promise to keep above 0.5).
    spec = spec_copy(tmp_path, REPO / "data" / "demo.yaml", audit={"max_attack_auc": 0.5},
                     privacy={"allocation": {"audit": 0.001}})
    state = run_flow(spec, "demo-blocked")
    assert state.is_failed() and "membership-auc" in state.message and "> threshold 0.500" in state.message
    assert published_files(tmp_path) == []
    # Run again as a scheduled slot's id (once): it ends blocked again without a new attempt or spend.
    from safesynth.privacy.ledger import Ledger
    from safesynth.release import run_release

    def attempts():
        with Ledger.for_spec(load_spec(spec)) as ledger:
            return [(r.attempt, r.status, r.epsilon) for r in ledger.find(load_spec(spec).dataset, "demo-blocked")]

    before = attempts()
    assert [a[1] for a in before] == ["blocked"]
    again = run_release(spec, release_id="demo-blocked", once=True)
    assert (again.status, again.exit_code) == ("blocked", 3) and "a slot runs once" in again.message
    assert attempts() == before and published_files(tmp_path) == []
    # The command a user runs: the Prefect flow in its own process, exit code 3.
    proc = run_cli_process("release", str(spec), "--release-id", "demo-blocked-cli")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "membership-auc" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert published_files(tmp_path) == []
    # The blocked releases still spent their budget (data was read).
    show = run_cli("budget", "show", load_spec(spec).dataset, "--json")
    assert show.exit_code == 0, show.output
    assert "blocked" in show.output


def test_exhausted_budget_blocks_before_reading_the_source(tmp_path, safesynth_home):
    source = tmp_path / "demo.csv"
    shutil.copyfile(REPO / "data" / "demo.csv", source)
    spec = spec_copy(tmp_path, REPO / "data" / "demo.yaml", privacy={"epsilon": 4.0, "lifetime_epsilon": 6.0},
                     source=str(source))
    first = run_cli("release", str(spec), "--engine", "local", "--release-id", "r1", "--json")
    assert first.exit_code == 0, first.output
    assert '"differentially_private": true' in first.output  # --json carries the DP audit figures only
    assert not [k for k in ("members", "non_members", "tpr_at_low_fpr", "holdout_rows") if f'"{k}":' in first.output]
    # The same source, now garbage: passes the pre-flight checks, fails if it were read: proves it is not.
    source.write_bytes(b"\xff\xfe not, a\n\"csv")
    second = run_cli("release", str(spec), "--engine", "local", "--release-id", "r2")
    assert second.exit_code == 3, second.output
    assert "budget" in second.output and "remains" in second.output
    # Renaming the dataset does not reset its budget: the ledger knows the source (exit 2, nothing read).
    data = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({**data, "dataset": "demo-renamed"}))
    third = run_cli("release", str(spec), "--engine", "local", "--release-id", "r3")
    assert third.exit_code == 2, third.output
    assert "`dataset` (demo-renamed) must be `demo`" in third.output
    assert [p.parent.name for p in published_files(tmp_path) if p.name == "manifest.json"] == ["r1"]


def test_undeclared_categories_are_discovered_with_dp_and_charged(tmp_path, safesynth_home):
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    column = next(n for n, c in data["columns"].items() if c["type"] == "categorical" and not c.get("nullable"))
    declared = data["columns"][column].pop("categories")
    spec = spec_copy(tmp_path, REPO / "data" / "demo.yaml", columns=data["columns"],
                     privacy={"allocation": {"discovery": 0.2}})
    result = run_cli("release", str(spec), "--engine", "local", "--release-id", "disc")
    assert result.exit_code == 0, result.output
    final = tmp_path / "releases" / "demo" / "disc"
    manifest = json.loads((final / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["privacy"]["stages"]}
    assert any(name.startswith("discovery") for name in stages), stages
    assert manifest["privacy"]["epsilon"] <= 4.0 + 1e-9
    frame = pd.read_parquet(final / "part-00000.parquet")
    assert set(frame[column].dropna()) <= set(declared)  # discovered categories are real ones
    meta = read_release_metadata(final / "part-00000.parquet")
    assert any(s["stage"].startswith("discovery") for s in json.loads(meta["stages"]))


def test_flow_publishes_an_llm_release(tmp_path, safesynth_home, prefect_harness, monkeypatch):
    """The DP-SGD language model through the whole flow (a tiny model on a column subset without text, for
    speed, so with its default MST warm start and calibrated sampling), sampled on a LocalCluster started for
    the release (its workers prewarmed while the data is read and fitted)."""
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    keep = ["age", "sex", "department", "visit_type", "smoker", "bmi"]
    columns = {name: data["columns"][name] for name in keep}
    spec = spec_copy(tmp_path, REPO / "data" / "demo.yaml", columns=columns,
                     generator={"kind": "llm", "layers": 1, "hidden_size": 32, "heads": 2, "epochs": 1,
                                "batch_size": 256, "condition_on": "department"},
                     sampling={"rows": 300, "seed": 0})
    subset = yaml.safe_load(spec.read_text())
    subset["columns"] = columns  # spec_copy merges mappings: keep only the subset (no text column)
    spec.write_text(yaml.safe_dump(subset, sort_keys=False))
    state = run_flow(spec, "llm-e2e")
    assert state.is_completed(), state.message
    manifest = check_release(tmp_path, spec, "llm-e2e")
    stages = {s["stage"]: s for s in manifest["privacy"]["stages"]}
    # a table without text: the default warm start (MST) and calibration
    assert set(stages) == {"condition", "repairs", "generator.count", "generator.warm_start", "generator.dp_sgd",
                           "audit.count", "audit.auc"}
    assert stages["generator.warm_start"]["secure_noise"] is True
    assert stages["generator.dp_sgd"]["secure_noise"] is False  # Opacus noise, recorded honestly
    assert manifest["privacy"]["secure_noise"] is False
    assert manifest["privacy"]["guarantee"].startswith("epsilon holds if torch's RNG is unpredictable")
    assert manifest["privacy"]["epsilon"] <= 4.0
