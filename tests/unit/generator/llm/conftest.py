"""Small specs and frames for the LLM generator tests (everything made up here; no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from safesynth.spec import ReleaseSpec, parse_spec

#: Every column type, nullable and not, with bounds that are not powers of the digit base.
ALL_TYPES: dict[str, Any] = {
    "n": {"type": "integer", "min": -5, "max": 12_345},
    "k": {"type": "integer", "min": 3, "max": 3, "nullable": True},
    "x": {"type": "float", "min": 0.1, "max": 2.55, "precision": 2, "nullable": True},
    "c": {"type": "categorical", "categories": ["a", "b b", "ç"], "nullable": True},
    "f": {"type": "boolean", "nullable": True},
    "d": {"type": "datetime", "min": "2020-01-01T12:00:00", "max": "2021-03-01", "nullable": True},
    "s": {"type": "datetime", "min": "2020-01-01", "max": "2020-01-02T00:00:10", "resolution": "second"},
    "t": {"type": "text", "max_length": 6, "nullable": True},
}

#: No text: fast to sample with an untrained model.
TABULAR: dict[str, Any] = {
    "a": {"type": "categorical", "categories": ["p", "q", "r", "s"]},
    "b": {"type": "categorical", "categories": ["w", "x", "y", "z"], "nullable": True},
    "n": {"type": "integer", "min": 0, "max": 999},
    "v": {"type": "float", "min": -1.0, "max": 1.0, "precision": 1},
}


def llm_spec(tmp_path: Path, columns: dict[str, Any], *, epsilon: float = 2.0, delta: float = 1e-5,
             mechanism: str = "laplace", **generator: Any) -> ReleaseSpec:
    """A tiny llm spec; the MST warm start (the default for tables without text) is off unless asked for, so
    these tests exercise DP-SGD alone (``test_warm.py`` covers the default)."""
    gen = {"kind": "llm", "layers": 1, "hidden_size": 32, "heads": 2, "context_length": 128, "epochs": 1.0,
           "batch_size": 32, "learning_rate": 1e-2, "warm_start": "none", **generator}
    return parse_spec({
        "dataset": "unit-llm", "source": "data.csv", "columns": columns,
        "privacy": {"epsilon": epsilon, "delta": delta, "lifetime_epsilon": 100.0, "mechanism": mechanism},
        "generator": gen, "sampling": {"rows": 100, "seed": 0, "batch_size": 64},
        "publish": {"target": "releases"},
    }, base_dir=tmp_path)


def tabular_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """``b`` is a function of ``a`` (or null), ``n`` = 100 * index(a) + noise: learnable structure."""
    rng = np.random.default_rng(seed)
    a = rng.choice(["p", "q", "r", "s"], n, p=[0.4, 0.3, 0.2, 0.1])
    b = pd.Series(np.array(["w", "x", "y", "z"])[np.searchsorted(["p", "q", "r", "s"], a)], dtype="str")
    b[rng.random(n) < 0.1] = None
    idx = np.searchsorted(["p", "q", "r", "s"], a)
    return pd.DataFrame({
        "a": pd.Series(a, dtype="str"),
        "b": b.astype("str"),
        "n": pd.array(100 * idx + rng.integers(0, 10, n), dtype="Int64"),
        "v": pd.array(np.round(rng.uniform(-1, 1, n), 1), dtype="Float64"),
    })


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """Tiny models run as fast on one thread, and stay fast when other processes load the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("SAFESYNTH_TORCH_THREADS", "1")
    yield
    torch.set_num_threads(before)
