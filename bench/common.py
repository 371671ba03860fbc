"""Shared helpers for the benchmarks: public specs of the shared datasets, loading, one release.

The utility metrics (``marginal_tvd``, ``tstr``) come from :mod:`safesynth.audit.utility`.

The declared domains below are the datasets' *documented* schemas (UCI adult.names; the reviews file's
published column description), written here by hand, as a data owner would write a spec.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(Path(tempfile.gettempdir()) / "safesynth-bench-hf"))
sys.path.insert(0, str(REPO))

from safesynth.audit.utility import marginal_tvd, tstr  # noqa: E402,F401
from safesynth.generator import get_backend  # noqa: E402
from safesynth.privacy.accountant import ReleaseAccount  # noqa: E402
from safesynth.privacy.noise import OpenDPNoise  # noqa: E402
from safesynth.privacy.planner import plan_budget  # noqa: E402
from safesynth.schema import pandas_dtype  # noqa: E402
from safesynth.spec import ReleaseSpec, parse_spec  # noqa: E402

_CAT = "categorical"
ADULT_COLUMNS: dict[str, Any] = {
    "age": {"type": "integer", "min": 17, "max": 90},
    "workclass": {"type": _CAT, "nullable": True, "categories": [
        "Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov", "Local-gov", "State-gov", "Without-pay",
        "Never-worked"]},
    "fnlwgt": {"type": "integer", "min": 0, "max": 1_500_000},
    "education": {"type": _CAT, "categories": [
        "Bachelors", "Some-college", "11th", "HS-grad", "Prof-school", "Assoc-acdm", "Assoc-voc", "9th",
        "7th-8th", "12th", "Masters", "1st-4th", "10th", "Doctorate", "5th-6th", "Preschool"]},
    "education_num": {"type": "integer", "min": 1, "max": 16},
    "marital_status": {"type": _CAT, "categories": [
        "Married-civ-spouse", "Divorced", "Never-married", "Separated", "Widowed", "Married-spouse-absent",
        "Married-AF-spouse"]},
    "occupation": {"type": _CAT, "nullable": True, "categories": [
        "Tech-support", "Craft-repair", "Other-service", "Sales", "Exec-managerial", "Prof-specialty",
        "Handlers-cleaners", "Machine-op-inspct", "Adm-clerical", "Farming-fishing", "Transport-moving",
        "Priv-house-serv", "Protective-serv", "Armed-Forces"]},
    "relationship": {"type": _CAT, "categories": [
        "Wife", "Own-child", "Husband", "Not-in-family", "Other-relative", "Unmarried"]},
    "race": {"type": _CAT, "categories": ["White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"]},
    "sex": {"type": _CAT, "categories": ["Female", "Male"]},
    "capital_gain": {"type": "integer", "min": 0, "max": 99_999},
    "capital_loss": {"type": "integer", "min": 0, "max": 4_356},
    "hours_per_week": {"type": "integer", "min": 1, "max": 99},
    "native_country": {"type": _CAT, "nullable": True, "categories": [
        "United-States", "Cambodia", "England", "Puerto-Rico", "Canada", "Germany", "Outlying-US(Guam-USVI-etc)",
        "India", "Japan", "Greece", "South", "China", "Cuba", "Iran", "Honduras", "Philippines", "Italy",
        "Poland", "Jamaica", "Vietnam", "Mexico", "Portugal", "Ireland", "France", "Dominican-Republic", "Laos",
        "Ecuador", "Taiwan", "Haiti", "Columbia", "Hungary", "Guatemala", "Nicaragua", "Scotland", "Thailand",
        "Yugoslavia", "El-Salvador", "Trinadad&Tobago", "Peru", "Hong", "Holand-Netherlands"]},
    "income": {"type": _CAT, "categories": ["<=50K", ">50K"]},
}

REVIEWS_COLUMNS: dict[str, Any] = {
    "age": {"type": "integer", "min": 18, "max": 99},
    "review_text": {"type": "text", "max_length": 508, "nullable": True},
    "rating": {"type": "integer", "min": 1, "max": 5},
    "recommended_ind": {"type": "boolean"},
    "department_name": {"type": _CAT, "nullable": True, "categories": [
        "Intimate", "Dresses", "Bottoms", "Tops", "Jackets", "Trend"]},
}


def make_spec(columns: dict[str, Any], *, source: str, epsilon: float, delta: float, generator: dict[str, Any],
              rows: int, base_dir: Path, seed: int = 0, target: str | None = None) -> ReleaseSpec:
    """A bench spec; ``target`` is declared as ``audit.target_column`` (the label, as a release for a
    classifier declares it: the llm's warm start then measures its pairs first)."""
    return parse_spec({
        "dataset": "bench", "source": source, "columns": columns,
        "privacy": {"epsilon": epsilon, "delta": delta, "lifetime_epsilon": 100.0},
        "generator": generator, "sampling": {"rows": rows, "seed": seed, "batch_size": 512},
        "publish": {"target": "releases"}, **({"audit": {"target_column": target}} if target else {}),
    }, base_dir=base_dir)


def load_typed(path: Path, spec: ReleaseSpec) -> pd.DataFrame:
    """The CSV with the spec's columns and dtypes (the shared files are clean: no validation needed)."""
    raw = pd.read_csv(path, usecols=list(spec.columns), keep_default_na=True)
    out = {}
    for name, col in spec.columns.items():
        series = raw[name]
        if col.type == "boolean":
            series = series.map({1: True, 0: False, "1": True, "0": False})
        if col.type == "text":
            series = series.where(series.isna(), series.astype(str).str.slice(0, col.max_length))
        out[name] = series.astype(pandas_dtype(col))
    return pd.DataFrame(out)


def split(frame: pd.DataFrame, *, holdout: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    perm = np.random.default_rng(seed).permutation(len(frame))
    cut = int(round(len(frame) * (1 - holdout)))
    return frame.iloc[perm[:cut]].reset_index(drop=True), frame.iloc[perm[cut:]].reset_index(drop=True)


def run_release(kind: str, train: pd.DataFrame, spec: ReleaseSpec, *, rows: int, seed: int = 0) -> dict[str, Any]:
    """Fit + sample in this process; wall times and peak RSS (this process's whole life, in GB)."""
    plan = plan_budget(spec)
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        fitted = get_backend(kind).fit(train, spec=spec, plan=plan, account=account, noise=OpenDPNoise(),
                                       workdir=Path(work))
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        synthetic = fitted.sample(rows, seed=seed)
        sample_s = time.perf_counter() - start
    return {"synthetic": synthetic, "fitted": fitted, "fit_s": fit_s, "sample_s": sample_s, "epsilon": account.epsilon,
            "stages": [{"stage": s.stage, "epsilon": s.epsilon, "delta": s.delta, **{
                k: v for k, v in s.detail.items() if isinstance(v, int | float | str) and k != "insecure_noise_reason"}}
                for s in account.spends],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------------------------------ metrics
# The metrics live in safesynth.audit.utility (the release audit uses the same code); re-exported here.


def mean_std(values: Any) -> dict[str, Any]:
    """Mean and sample std (ddof 1) of the finite values; ``std`` is None for fewer than two."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return {"mean": float(arr.mean()) if len(arr) else None,
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else None, "n": int(len(arr))}


def mean_std_text(stat: dict[str, Any] | None) -> str:
    """``mean ± std`` with both rounded to the std's second significant digit; the mean alone for one run."""
    if not stat or stat.get("mean") is None:
        return ""
    mean, std = stat["mean"], stat.get("std")
    if std is None:
        return f"{mean:.4g}"
    if std == 0 or not np.isfinite(std):
        return f"{mean:.4g} ± {std:g}"
    decimals = min(8, max(0, 1 - int(np.floor(np.log10(std)))))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return "\n".join(lines)
