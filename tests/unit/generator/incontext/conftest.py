"""A tiny Llama with a character tokenizer, built from a config here (no downloads), and small text specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from safesynth.spec import ReleaseSpec, parse_spec
from tests.unit.generator.incontext.tiny import save_tiny_model

#: A text column, its label and a nullable integer: the text is generated in context, the rest is not.
REVIEWS: dict[str, Any] = {
    "review": {"type": "text", "max_length": 24},
    "sentiment": {"type": "categorical", "categories": ["good", "bad"]},
    "stars": {"type": "integer", "min": 1, "max": 5, "nullable": True},
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def incontext_spec(tmp_path: Path, model: Path | str, columns: dict[str, Any] | None = None, *, rows: int = 6,
                   epsilon: float = 4.0, delta: float = 1e-5, **generator: Any) -> ReleaseSpec:
    gen = {"kind": "incontext", "model": str(model), "prompts": 4, "shots": 2, "max_new_tokens": 6, "top_k": 8,
           "device": "cpu", "distributed": False, **generator}
    return parse_spec({
        "dataset": "unit-incontext", "source": "data.csv", "columns": columns or REVIEWS,
        "privacy": {"epsilon": epsilon, "delta": delta, "lifetime_epsilon": 100.0},
        "generator": gen, "sampling": {"rows": rows, "seed": 0}, "publish": {"target": "releases"},
    }, base_dir=tmp_path)


def review_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good = rng.random(n) < 0.6
    words = {True: ["great", "soft", "love it"], False: ["torn", "too small", "meh"]}
    stars = pd.array(np.where(good, rng.integers(4, 6, n), rng.integers(1, 3, n)), dtype="Int64")
    stars[rng.random(n) < 0.1] = pd.NA
    return pd.DataFrame({
        "review": pd.Series([str(rng.choice(words[bool(g)])) for g in good], dtype="str"),
        "sentiment": pd.Series(np.where(good, "good", "bad"), dtype="str"),
        "stars": stars,
    })


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    monkeypatch.setenv("SAFESYNTH_TORCH_THREADS", "1")
    monkeypatch.setenv("SAFESYNTH_PROGRESS", "0")
