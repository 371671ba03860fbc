"""``safesynth audit``: any synthetic table against its training and holdout tables, exit 3 when gates block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safesynth.flows.cli import app
from typer.testing import CliRunner

from tests.helpers import MIXED_COLUMNS, mixed_frame

pytestmark = [pytest.mark.e2e]


def _setup(tmp_path: Path) -> Path:
    spec = {
        "dataset": "cli-audit", "source": "train.parquet", "columns": MIXED_COLUMNS,
        "privacy": {"epsilon": 2.0, "delta": 1e-6, "lifetime_epsilon": 20.0},
        "sampling": {"rows": 500, "seed": 0}, "publish": {"target": "releases"},
        # 700 holdout rows give ~550 slots per side: a loose gate keeps the real noise from flipping the pass.
        "audit": {"target_column": "plan", "sensitive_columns": ["plan"], "max_attack_auc": 0.7},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    train = mixed_frame(700, seed=1)
    train.to_parquet(tmp_path / "train.parquet", index=False)
    mixed_frame(700, seed=2).to_parquet(tmp_path / "holdout.parquet", index=False)
    mixed_frame(700, seed=3).to_csv(tmp_path / "independent.csv", index=False)
    train.to_parquet(tmp_path / "copy.parquet", index=False)
    return tmp_path / "spec.yaml"


def _audit(spec: Path, synthetic: str, *extra: str):
    return CliRunner().invoke(app, ["audit", str(spec), "--train", "train.parquet", "--holdout", "holdout.parquet",
                                    "--synthetic", synthetic, *extra], catch_exceptions=False,
                                   env={"COLUMNS": "250"})


def test_a_copy_of_the_training_rows_is_blocked_with_exit_3_and_a_report(tmp_path, monkeypatch):
    spec = _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _audit(spec, "copy.parquet", "--report", "owner")
    assert result.exit_code == 3, result.output
    assert "membership-auc" in result.output and "distance-to-closest-record" in result.output
    data = json.loads((tmp_path / "owner" / "audit_report.json").read_text())
    assert {a["attack"] for a in data["attacks"]} == {"distance-to-closest-record", "domias", "gen-lra", "classifier"}
    assert all(a["auc"] > 0.9 for a in data["attacks"] if a["attack"] != "gen-lra")
    assert (tmp_path / "owner").stat().st_mode & 0o777 == 0o700


def test_an_independent_table_passes_with_exit_0(tmp_path, monkeypatch):
    spec = _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _audit(spec, "independent.csv")
    assert result.exit_code == 0, result.output
    assert "TSTR ROC AUC" in result.output and "inference:plan" in result.output


def test_a_missing_table_is_one_line_and_exit_2(tmp_path, monkeypatch):
    spec = _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _audit(spec, "nope.parquet")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_help_names_the_options():
    result = CliRunner().invoke(app, ["audit", "--help"])
    assert result.exit_code == 0
    assert all(option in result.output for option in ("--train", "--holdout", "--synthetic", "--report"))
