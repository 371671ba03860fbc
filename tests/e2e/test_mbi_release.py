"""Whole releases with the aim and mst generators (OpenDP's AIM and MST) through the same stages and gates.

A tiny table (400 rows, 4 columns, one nullable) and small AIM settings keep each release to seconds of
fitting. A spec with a text column is refused when it is loaded: nothing is read, reserved or published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from safesynth.errors import SpecError
from safesynth.release import run_release
from safesynth.spec import load_spec
from tests.helpers import rows_valid

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("shared_dask")]

ROWS = 400


def spec_path(tmp_path: Path, generator: dict[str, Any], columns: dict[str, Any] | None = None) -> Path:
    rng = np.random.default_rng(0)
    dept = rng.choice(["cardio", "neuro", "ortho"], ROWS)
    score = np.round(rng.uniform(0, 10, ROWS), 1).astype(object)
    score[rng.random(ROWS) < 0.2] = None
    frame = pd.DataFrame({"dept": dept, "smoker": np.where(dept == "cardio", "true", "false"),
                          "age": rng.integers(18, 91, ROWS), "score": score})
    frame.to_csv(tmp_path / "visits.csv", index=False)
    data: dict[str, Any] = {
        "dataset": "mbi", "source": str(tmp_path / "visits.csv"),
        "columns": columns or {"dept": {"type": "categorical", "categories": ["cardio", "neuro", "ortho"]},
                               "smoker": {"type": "boolean"},
                               "age": {"type": "integer", "min": 18, "max": 90},
                               "score": {"type": "float", "min": 0, "max": 10, "precision": 1, "nullable": True}},
        "privacy": {"epsilon": 4.0, "delta": 1e-5, "lifetime_epsilon": 100.0, "accountant": "pld"},
        "generator": generator, "sampling": {"rows": 300, "seed": 0},
        "audit": {"max_attack_auc": 1.0}, "publish": {"target": str(tmp_path / "releases")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("generator", [{"kind": "mst"}, {"kind": "aim", "rounds": 6, "queries": 2}],
                         ids=["mst", "aim"])
def test_release_publishes_valid_rows_within_the_budget(tmp_path, safesynth_home, generator):
    spec = spec_path(tmp_path, generator)
    outcome = run_release(spec, release_id="r1")
    assert outcome.status == "published", outcome.message
    final = tmp_path / "releases" / "mbi" / "r1"
    manifest = json.loads((final / "manifest.json").read_text())
    privacy = manifest["privacy"]
    assert privacy["epsilon"] <= 4.0 + 1e-9 and privacy["epsilon_pld"] <= 4.0 + 1e-9
    assert privacy["delta_basic"] <= 1e-5 * (1 + 1e-9) and privacy["secure_noise"] is True
    (gen,) = [s for s in privacy["stages"] if s["stage"] == "generator"]
    assert gen["mechanism"].startswith(generator["kind"]) and gen["event"]["type"] == "discrete_laplace"
    assert gen["extra_delta"] == gen["delta"] > 0 and gen["detail"]["rho"] > 0
    frame = pd.read_parquet(final / "part-00000.parquet")
    assert len(frame) == 300 and rows_valid(frame, load_spec(spec))
    assert frame[["dept", "smoker", "age"]].notna().all().all()


@pytest.mark.parametrize("kind", ["aim", "mst"])
def test_text_columns_are_refused_before_anything_is_read_or_reserved(tmp_path, safesynth_home, kind):
    columns = {"dept": {"type": "categorical", "categories": ["cardio", "neuro", "ortho"]},
               "note": {"type": "text", "max_length": 20}}
    spec = spec_path(tmp_path, {"kind": kind}, columns=columns)
    with pytest.raises(SpecError, match=rf"`generator.kind` \({kind}\) cannot model text columns"):
        run_release(spec, release_id="r1")
    assert not (tmp_path / "releases").exists()
    assert not any(safesynth_home.rglob("*.sqlite*")) and not (safesynth_home / "reports").exists()
