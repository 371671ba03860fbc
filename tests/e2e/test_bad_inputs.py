"""Bad input through the CLI: one line naming file/column/rule (never a count), exit code 2, nothing published.

Records that break a rule are repaired by default (``validation.on_invalid: repair``) and the release
goes on; with ``on_invalid: fail`` they stop it, with no count of private rows in the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safesynth.flows.cli import app
from typer.testing import CliRunner

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("shared_dask")]
SECRET = "SECRET_9137"
PERMISSIVE_GATE = {"holdout_fraction": 0.2, "max_attack_auc": 1.0}  # these tests are about input, not the audit


def demo_spec(tmp_path: Path, source: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data["source"] = str(source)
    data["publish"] = {"target": str(tmp_path / "releases")}
    data.update(changes)
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def demo_rows(n: int = 300) -> pd.DataFrame:
    return pd.read_csv(REPO / "data" / "demo.csv", dtype=str, keep_default_na=False, nrows=n)


def first_column(kind: str) -> str:
    cols = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())["columns"]
    return next(name for name, c in cols.items() if c["type"] == kind)


def run(spec: Path):
    result = CliRunner().invoke(app, ["release", str(spec), "--engine", "local"], catch_exceptions=False)
    return result, result.output.strip()


def assert_rejected(tmp_path: Path, result, output: str, *needles: str) -> None:
    assert result.exit_code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output  # exactly one actionable line (the rest are progress logs)
    assert "Traceback" not in output
    for needle in needles:
        assert needle in errors[0], (needle, output)
    assert " rows" not in errors[0] and " row " not in errors[0]  # counts of private rows are restricted
    assert SECRET not in output  # not in the error, not in the logs
    assert not (tmp_path / "releases").exists()


def assert_published(tmp_path: Path, result, output: str) -> dict:
    assert result.exit_code == 0, output
    assert SECRET not in output and "Traceback" not in output
    (manifest,) = (tmp_path / "releases").rglob("manifest.json")
    text = manifest.read_text()
    assert SECRET not in text
    return json.loads(text)


def test_malformed_csv(tmp_path, safesynth_home):
    src = tmp_path / "bad.csv"
    text = (REPO / "data" / "demo.csv").read_text().splitlines()[:50]
    text[10] = text[10] + f',"{SECRET},extra'
    src.write_text("\n".join(text) + "\n")
    result, out = run(demo_spec(tmp_path, src))
    assert_rejected(tmp_path, result, out, "bad.csv")


def test_missing_column(tmp_path, safesynth_home):
    col = first_column("categorical")
    src = tmp_path / "missing.csv"
    demo_rows().drop(columns=[col]).to_csv(src, index=False)
    result, out = run(demo_spec(tmp_path, src))
    assert_rejected(tmp_path, result, out, col, "missing")


def test_out_of_range_values_are_clamped_and_published(tmp_path, safesynth_home):
    col = first_column("integer")
    frame = demo_rows()
    frame.loc[[3, 7, 9], col] = "100000"
    src = tmp_path / "range.csv"
    frame.to_csv(src, index=False)
    manifest = assert_published(tmp_path, *run(demo_spec(tmp_path, src, audit=PERMISSIVE_GATE)))
    assert "repairs" in [s["stage"] for s in manifest["privacy"]["stages"]]
    assert "records_repaired_or_dropped" in manifest["validation"]


def test_out_of_range_values_fail_without_counts_when_asked(tmp_path, safesynth_home):
    col = first_column("integer")
    frame = demo_rows()
    frame.loc[[3, 7, 9], col] = "100000"
    src = tmp_path / "range.csv"
    frame.to_csv(src, index=False)
    result, out = run(demo_spec(tmp_path, src, validation={"on_invalid": "fail"}))
    assert_rejected(tmp_path, result, out, col, "values outside")


def test_wrong_types_drop_their_records_and_publish(tmp_path, safesynth_home):
    col = first_column("integer")
    frame = demo_rows()
    frame.loc[[1, 2], col] = SECRET
    src = tmp_path / "types.csv"
    frame.to_csv(src, index=False)
    assert_published(tmp_path, *run(demo_spec(tmp_path, src, audit=PERMISSIVE_GATE)))


def test_wrong_types_fail_without_counts_when_asked(tmp_path, safesynth_home):
    col = first_column("integer")
    frame = demo_rows()
    frame.loc[[1, 2], col] = SECRET
    src = tmp_path / "types.csv"
    frame.to_csv(src, index=False)
    result, out = run(demo_spec(tmp_path, src, validation={"on_invalid": "fail"}))
    assert_rejected(tmp_path, result, out, col, "not integers")


def test_unknown_spec_key(tmp_path, safesynth_home):
    src = tmp_path / "ok.csv"
    demo_rows().to_csv(src, index=False)
    spec = demo_spec(tmp_path, src, colour="blue")
    result, out = run(spec)
    assert_rejected(tmp_path, result, out, str(spec), "`colour`: unknown key")


def test_unreadable_source(tmp_path, safesynth_home):
    result, out = run(demo_spec(tmp_path, tmp_path / "nowhere.csv"))
    assert_rejected(tmp_path, result, out, "nowhere.csv")


def test_spec_check_reads_no_data(tmp_path):
    spec = demo_spec(tmp_path, tmp_path / "nowhere.csv")
    result = CliRunner().invoke(app, ["spec", "check", str(spec)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_spec_check_says_what_the_llms_auto_warm_start_decided(tmp_path):
    """demo.yaml has a text column (DP-SGD only); without it the llm warm starts from MST, calibrated."""
    columns = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())["columns"]
    with_text = demo_spec(tmp_path, tmp_path / "nowhere.csv", generator={"kind": "llm"})
    result = CliRunner().invoke(app, ["spec", "check", str(with_text)])
    assert result.exit_code == 0, result.output
    assert "generator llm (DP-SGD only)" in " ".join(result.output.split())
    no_text = demo_spec(tmp_path, tmp_path / "nowhere.csv", generator={"kind": "llm"},
                        columns={k: v for k, v in columns.items() if v["type"] != "text"})
    result = CliRunner().invoke(app, ["spec", "check", str(no_text)])
    assert result.exit_code == 0, result.output
    assert "generator llm (warm start mst, share 0.3, calibrated)" in " ".join(result.output.split())
    for pairs, says in ((True, "share 0.7, label pairs of `follow_up`, calibrated"), (False, "share 0.3, calibrated")):
        labelled_llm = {"kind": "llm", "condition_on": "follow_up", "warm_start_label_pairs": pairs}
        labelled = demo_spec(tmp_path, tmp_path / "nowhere.csv", generator=labelled_llm,
                             columns={k: v for k, v in columns.items() if v["type"] != "text"})
        result = CliRunner().invoke(app, ["spec", "check", str(labelled)])
        assert result.exit_code == 0, result.output
        assert f"(warm start mst, {says})" in " ".join(result.output.split())
