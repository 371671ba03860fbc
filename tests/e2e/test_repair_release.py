"""Whole releases with records outside their domains: they publish every time, and publish no exact count.

Issue 8: one record outside a DP-discovered domain used to make the release fail (5 of 5 runs), so the
exit code revealed exactly the record discovery paid to hide. Here a table holds one rare category of an
undeclared (discovered) column, one outlier beyond a discovered integer range and one beyond a declared
one; every release, with fresh OpenDP noise each time, must publish, for both generators.
"""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from safesynth.errors import SchemaValidationError
from safesynth.release import run_release

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("shared_dask")]

SECRET = "RARE_9137"  # the rare category: never in anything published or logged
RUNS = 5
ROWS = 400

TINY_LLM = {"kind": "llm", "layers": 1, "hidden_size": 32, "heads": 2, "epochs": 1.0, "batch_size": 128,
            "context_length": 32, "warm_start": "none"}


def table(tmp_path: Path) -> Path:
    """Common values, plus one record with a rare category, one beyond a discovered range, one beyond [0, 100]."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "dept": rng.choice(["cardio", "neuro", "ortho"], ROWS),
        "visits": rng.integers(20, 81, ROWS),
        "age": rng.integers(18, 90, ROWS),
        "smoker": rng.choice(["true", "false"], ROWS),
    })
    frame.loc[7, "dept"] = SECRET  # undeclared categories: DP discovery keeps it out (count 1)
    frame.loc[11, "visits"] = 9_137_000  # undeclared bounds: far beyond the discovered range
    frame.loc[13, "age"] = 250  # declared bounds [0, 100]: repaired by validation
    path = tmp_path / "visits.csv"
    frame.to_csv(path, index=False)
    return path


def spec_path(tmp_path: Path, generator: dict[str, Any], **changes: Any) -> Path:
    data: dict[str, Any] = {
        "dataset": "repair", "source": str(table(tmp_path)),
        "columns": {"dept": {"type": "categorical", "max_categories": 10},
                    "visits": {"type": "integer"},
                    "age": {"type": "integer", "min": 0, "max": 100},
                    "smoker": {"type": "boolean"}},
        "privacy": {"epsilon": 4.0, "delta": 1e-5, "lifetime_epsilon": 1000.0, "allocation": {"discovery": 0.3}},
        "generator": generator, "sampling": {"rows": 200, "seed": 0},
        # A permissive gate: this test is about repair, not about the audit.
        "audit": {"max_attack_auc": 1.0}, "publish": {"target": str(tmp_path / "releases")}, **changes,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def reports(home: Path, release_id: str) -> Path:
    (found,) = (home / "reports" / "repair" / release_id).iterdir()
    return found


@pytest.mark.parametrize("generator", [{"kind": "marginals"}, TINY_LLM], ids=["marginals", "llm"])
def test_rare_category_and_outliers_publish_in_every_run(tmp_path, safesynth_home, caplog, generator):
    spec = spec_path(tmp_path, generator)
    with caplog.at_level(logging.INFO, logger="safesynth"):
        outcomes = [run_release(spec, release_id=f"r{i}") for i in range(RUNS)]  # OpenDP noise, fresh each run
    assert [o.status for o in outcomes] == ["published"] * RUNS
    assert SECRET not in caplog.text and "9137000" not in caplog.text
    for i in range(RUNS):
        final = tmp_path / "releases" / "repair" / f"r{i}"
        manifest = json.loads((final / "manifest.json").read_text())
        assert SECRET not in (final / "manifest.json").read_text()
        check_validation_section(manifest)
        stages = [s["stage"] for s in manifest["privacy"]["stages"]]
        assert "repairs" in stages and any(s.startswith("discovery") for s in stages)
        assert manifest["privacy"]["epsilon"] <= 4.0 + 1e-9
        frame = pd.read_parquet(final / "part-00000.parquet")
        assert SECRET not in set(frame["dept"]) and frame["age"].between(0, 100).all()
        exact = json.loads((reports(safesynth_home, f"r{i}") / "validation.json").read_text())
        assert exact["records_repaired"] == 1 and exact["records_dropped"] == 0  # the age outlier, clamped
        repairs = json.loads((reports(safesynth_home, f"r{i}") / "repairs.json").read_text())
        assert repairs["by_validation"] == 1 and repairs["by_domain_repair"] >= 0  # exact: restricted only
    mode = stat.S_IMODE(reports(safesynth_home, "r0").stat().st_mode)
    assert mode & 0o077 == 0  # restricted: owner only


def check_validation_section(manifest: dict[str, Any]) -> None:
    """Spec constants and the DP count only: no exact count of private rows."""
    section = manifest["validation"]
    assert set(section) == {"engine", "gx_version", "suite", "on_invalid", "evaluated", "rules",
                            "records_repaired_or_dropped"}
    assert section["on_invalid"] == "repair"
    count = section["records_repaired_or_dropped"]
    assert set(count) == {"noisy_count", "mechanism", "epsilon", "sensitivity", "note"}
    assert count["sensitivity"] == 1 and count["epsilon"] == pytest.approx(0.02 * 4.0)
    repairs = next(s for s in manifest["privacy"]["stages"] if s["stage"] == "repairs")
    assert repairs["detail"]["noisy_count"] == count["noisy_count"]
    assert repairs["event"]["type"] == "discrete_laplace"
    text = json.dumps(section)
    for word in ("records_read", "records_dropped", "element_count", "unexpected", "passed"):
        assert word not in text


def test_on_invalid_fail_names_the_rule_without_counts(tmp_path, safesynth_home, caplog):
    spec = spec_path(tmp_path, {"kind": "marginals"}, validation={"on_invalid": "fail"})
    with caplog.at_level(logging.INFO, logger="safesynth"), pytest.raises(SchemaValidationError) as info:
        run_release(spec, release_id="fails")
    message = str(info.value)
    assert message.endswith("does not match the spec: column `age` values outside [0, 100]")
    assert "row" not in message and SECRET not in caplog.text
    assert info.value.restricted is None  # the exact figures stayed in the restricted zone
    exact = json.loads((reports(safesynth_home, "fails") / "validation.json").read_text())
    assert exact["rules"] == [{"column": "age", "rule": "values outside [0, 100]", "records": 1}]
    assert not (tmp_path / "releases").exists()
