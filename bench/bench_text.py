"""Text quality, privacy smells and cost of the text generators on the shared reviews file.

Data: ``womens_clothing_ecommerce_reviews.csv`` rows with a non-empty ``review_text``, 80/20 split (seed 0),
then the first ``--train-rows`` of the 80 % and ``--test-rows`` of the 20 % (so CPU runs finish). The spec
is the reviews' declared schema (``common.REVIEWS_COLUMNS``) with ``review_text`` capped at
``--max-length`` characters (longer reviews are cut there, in the real rows too).

Generators are named configurations; each (generator, epsilon) is fitted and sampled in its own process (peak
RSS per run). A configuration the installed code does not support (an unknown ``kind``, a missing model or
optional package) is reported as ``unsupported`` with the reason and skipped:

* ``scratch``: ``{kind: llm}``, today's default: a small model built from config, trained from scratch on
  UTF-8 bytes.
* ``smollm2-lora``: ``{kind: llm, model: smollm2-135m, lora: true}`` with small CPU settings.
* ``incontext``: ``{kind: incontext, model: smollm2-135m, ...}``: DP in-context generation from the public
  model; it may return fewer rows than asked (its budget decides), so the table reports rows generated.

Metrics per generator and epsilon (the ``real test`` row applies the same metrics to real held-out texts):
TSTR of a TF-IDF + logistic regression text classifier (synthetic texts -> ``recommended_ind`` and
``rating >= 4``, tested on the real test texts) next to TRTR (the same classifier on as many real training
texts); vocabulary overlap and coverage; length quantiles; perplexity under ``smollm2-135m``; verbatim and
near-verbatim copies of training texts (definitions in ``text_metrics.copy_stats``); epsilon spent; fit and
sample wall time, sampling seconds per generated token; peak RSS.

    SAFESYNTH_TORCH_THREADS=1 .venv/bin/python bench/bench_text.py                  # scratch, eps 1 and 4
    .venv/bin/python bench/bench_text.py --generators scratch smollm2-lora incontext --eps 4
    .venv/bin/python bench/bench_text.py --generators smollm2-lora --set smollm2-lora.epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import text_metrics as tm  # noqa: E402
from common import (  # noqa: E402
    DATA,
    REVIEWS_COLUMNS,
    OpenDPNoise,
    ReleaseAccount,
    get_backend,
    load_typed,
    make_spec,
    mean_std,
    mean_std_text,
    plan_budget,
    split,
    table,
    write_results,
)

DELTA = 1e-5
TEXT = "review_text"
PATH = DATA / "womens_clothing_ecommerce_reviews.csv"
#: Named generator configurations; ``--set NAME.KEY=JSON`` overrides a field.
GENERATORS: dict[str, dict[str, Any]] = {
    "scratch": {"kind": "llm"},
    # The CPU settings bench_pretrained.py measured (README "Pretrained LLM"): one pass, small batches, BPE
    # texts of ~45 tokens in a 128-token context, hooks (LoRA's clipped parameters are small).
    "smollm2-lora": {"kind": "llm", "model": "smollm2-135m", "lora": True, "epochs": 1.0, "batch_size": 64,
                     "physical_batch_size": 16, "context_length": 128},
    # The spec's defaults (32 disjoint prompts of ~2 private reviews of one ``recommended_ind`` value, 48 new
    # tokens of the top 32): texts are written while fitting and the budget decides how many.
    "incontext": {"kind": "incontext", "model": "smollm2-135m", "text_column": TEXT,
                  "condition_on": "recommended_ind", "prompts": 32, "shots": 2, "max_new_tokens": 24, "top_k": 32},
}
#: Rows asked per generator unless ``--rows`` names it: in-context generation costs ~11 s per text on one
#: CPU thread (a forward pass of prompts + 1 sequences per token), so its default is small.
DEFAULT_ROWS = {"incontext": 20, "smollm2-lora": 64}
#: ``sampling.batch_size`` per generator (default 512): a batch of 512 smollm2 rows holds a ~5 GB KV cache.
SAMPLE_BATCH = {"smollm2-lora": 64}
#: Labels the text classifier predicts: name -> function of a frame (None if a column is missing).
LABELS = {"recommended": lambda f: f["recommended_ind"].astype(bool) if "recommended_ind" in f else None,
          "rating4": lambda f: f["rating"].astype(float) >= 4 if "rating" in f else None}


def columns(max_length: int) -> dict[str, Any]:
    return {**REVIEWS_COLUMNS, TEXT: {**REVIEWS_COLUMNS[TEXT], "max_length": max_length}}


def generator_config(name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**GENERATORS[name], **overrides.get(name, {})}


def spec_for(config: dict[str, Any], *, epsilon: float, rows: int, max_length: int) -> Any:
    return make_spec(columns(max_length), source=str(PATH), epsilon=epsilon, delta=DELTA, generator=config,
                     rows=rows, base_dir=Path.cwd())


def load_split(*, train_rows: int, test_rows: int, max_length: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows with a non-empty text, 80/20 (seed 0), then the first rows of each part (already shuffled)."""
    frame = load_typed(PATH, spec_for({"kind": "marginals"}, epsilon=1.0, rows=1, max_length=max_length))
    frame = frame[frame[TEXT].notna() & (frame[TEXT].astype(str).str.strip() != "")].reset_index(drop=True)
    train, test = split(frame, holdout=0.2, seed=0)
    return train.head(train_rows).reset_index(drop=True), test.head(test_rows).reset_index(drop=True)


def unsupported_reason(config: dict[str, Any], *, max_length: int) -> str | None:
    """Why the installed code cannot run ``config`` (spec, backend, model), or None. Reads no data."""
    from pydantic import ValidationError

    from safesynth import preflight
    from safesynth.errors import SafeSynthError

    try:
        spec = spec_for(config, epsilon=1.0, rows=1, max_length=max_length)
        get_backend(spec.generator.kind)
        checks = ["check_model"] + (["check_incontext"] if spec.generator.kind == "incontext" else [])
        for name in checks:  # the data-free checks this code has
            check = getattr(preflight, name, None)
            if check is not None:
                check(spec)
    except ValidationError as exc:
        return f"spec rejected: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
    except (SafeSynthError, ValueError, ImportError) as exc:
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


# ------------------------------------------------------------------------------------------ one run (child)


def fit_and_sample(config: dict[str, Any], *, epsilon: float, rows: int, args: argparse.Namespace,
                   out: Path) -> dict[str, Any]:
    """Fit on the training subset and sample ``rows``; the synthetic rows go to ``out`` (Parquet)."""
    from safesynth.errors import SafeSynthError

    train, _ = load_split(train_rows=args.train_rows, test_rows=args.test_rows, max_length=args.max_length)
    spec = spec_for(config, epsilon=epsilon, rows=rows, max_length=args.max_length)
    batch = SAMPLE_BATCH.get(args.generators[0])
    if batch is not None:
        spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"batch_size": batch})})
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    try:
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            fitted = get_backend(spec.generator.kind).fit(train, spec=spec, plan=plan_budget(spec), account=account,
                                                         noise=OpenDPNoise(), workdir=Path(work))
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            # A generator that writes its rows while fitting publishes at most the rows its budget bought.
            synthetic = fitted.sample(min(rows, getattr(fitted, "rows_available", rows)), seed=0)
            sample_s = time.perf_counter() - start
    except SafeSynthError as exc:
        # Refused before the first spend: a configuration the installed code does not support.
        status = "failed" if account.spends else "unsupported"
        return {"status": status, "reason": f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"}
    synthetic.to_parquet(out)
    return {"status": "ok", "fit_s": fit_s, "sample_s": sample_s, "epsilon": account.epsilon,
            "stages": [{"stage": s.stage, "epsilon": s.epsilon, "delta": s.delta} for s in account.spends],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def rows_for(name: str, items: list[str]) -> int:
    """``--rows``: ``N`` for every generator, ``NAME=N`` for one (wins); defaults in ``DEFAULT_ROWS``."""
    named = [int(i.partition("=")[2]) for i in items if i.partition("=")[0] == name]
    plain = [int(i) for i in items if "=" not in i]
    return named[-1] if named else plain[-1] if plain else DEFAULT_ROWS.get(name, 2000)


def run_child(name: str, epsilon: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", "--generators", name, "--eps", str(epsilon), "--rows",
           str(rows_for(name, args.rows)),
           "--train-rows", str(args.train_rows), "--test-rows", str(args.test_rows), "--max-length",
           str(args.max_length), "--out", str(out), *sum((["--set", s] for s in args.set), [])]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"status": "failed", "reason": f"exit {proc.returncode} (traceback above)"}
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


# ------------------------------------------------------------------------------------------ metrics (parent)


class Evaluator:
    """Every metric of one set of texts (and their labels) against the fixed real train/test subsets."""

    def __init__(self, train: pd.DataFrame, test: pd.DataFrame, *, perplexity_texts: int) -> None:
        self.train, self.test = train, test
        self.train_texts = train[TEXT].astype(str).tolist()
        self.test_texts = test[TEXT].astype(str).tolist()
        self.perplexity_texts = perplexity_texts
        self.ppl: tm.Perplexity | None = None
        self.ppl_note = "not asked (--perplexity-texts 0)"
        self._trtr: dict[int, dict[str, Any]] = {}
        if perplexity_texts:
            try:
                self.ppl = tm.Perplexity("smollm2-135m")
                self.ppl_note = ""
            except Exception as exc:  # noqa: BLE001 - any load failure only skips the metric
                self.ppl_note = f"skipped: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"perplexity {self.ppl_note}", file=sys.stderr)

    def trts(self, frame: pd.DataFrame) -> dict[str, Any]:
        """The classifier trained on every real training text, scored on the synthetic texts against their
        generated labels: does a text carry the label it was generated with? (Needs far fewer texts than
        TSTR to tell a label-blind generator, at ~0.5, from one whose texts follow their labels.)"""
        out: dict[str, Any] = {}
        texts = frame[TEXT].astype(str).tolist()
        for label, get in LABELS.items():
            y, real = get(frame), get(self.train)
            result = (tm.text_tstr(self.train_texts, real.tolist(), texts, y.tolist())
                      if y is not None and real is not None else {"roc_auc": None})
            out[f"trts_{label}_auc"] = result["roc_auc"]
        return out

    def classifiers(self, frame: pd.DataFrame, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        texts = frame[TEXT].astype(str).tolist()
        for label, get in LABELS.items():
            y = get(frame)
            result = (tm.text_tstr(texts, y.tolist(), self.test_texts, get(self.test).tolist()) if y is not None
                      else {"accuracy": None, "roc_auc": None})
            out[f"{prefix}{label}_acc"], out[f"{prefix}{label}_auc"] = result["accuracy"], result["roc_auc"]
        return out

    def trtr(self, n: int) -> dict[str, Any]:
        """The classifier trained on the first ``n`` real training texts (same count as a synthetic set)."""
        n = min(n, len(self.train))
        if n not in self._trtr:
            self._trtr[n] = self.classifiers(self.train.head(n), "trtr_")
        return self._trtr[n]

    def evaluate(self, frame: pd.DataFrame) -> dict[str, Any]:
        frame = frame[frame[TEXT].notna()]
        frame = frame[frame[TEXT].astype(str).str.strip() != ""].reset_index(drop=True)
        texts = frame[TEXT].astype(str).tolist()
        out: dict[str, Any] = {"texts": len(texts), **self.classifiers(frame, "tstr_"), **self.trtr(len(texts)),
                               **self.trts(frame),
                               **tm.length_stats(texts, ""), **tm.vocab_stats(self.train_texts, texts),
                               **tm.copy_stats(self.train_texts, texts)}
        if self.ppl is not None and texts:
            ppl = self.ppl(texts[:self.perplexity_texts])
            out.update(ppl_corpus=ppl["corpus"], ppl_median=ppl["median"], ppl_texts=ppl["texts"])
            out["smollm2_tokens"] = self.ppl.token_count(texts)
        out["utf8_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
        return out


# ------------------------------------------------------------------------------------------ main


def _parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not dot or name not in GENERATORS:
            raise SystemExit(f"--set {item}: give NAME.KEY=JSON with NAME one of {sorted(GENERATORS)}")
        out.setdefault(name, {})[field] = json.loads(value) if value not in ("", "None") else None
    return out


def _one(args: argparse.Namespace) -> None:
    name = args.generators[0]
    config = generator_config(name, _parse_overrides(args.set))
    try:
        result = fit_and_sample(config, epsilon=args.eps[0], rows=rows_for(name, args.rows), args=args,
                                out=Path(args.out))
    except Exception as exc:  # noqa: BLE001 - reported as a failed run; the parent goes on
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    print("RESULT " + json.dumps(result), flush=True)


COLUMNS = ["generator", "eps_target", "eps_spent", "status", "rows_generated", "texts", "tstr_recommended_auc", "trtr_recommended_auc",
           "tstr_rating4_auc", "trtr_rating4_auc", "trts_recommended_auc", "trts_rating4_auc", "word_overlap", "type_overlap", "coverage_top", "chars_q50",
           "words_q50", "ppl_median", "verbatim", "shared_shingle", "near_copy", "similarity_q90", "fit_s",
           "sample_s", "sample_ms_per_token", "sample_ms_per_byte", "total_ms_per_token", "peak_rss_gb"]


#: Metrics summarised over ``--repeats`` (mean ± std per generator and epsilon).
SUMMARY = ["eps_spent", "texts", "tstr_recommended_auc", "trtr_recommended_auc", "tstr_rating4_auc",
           "trtr_rating4_auc", "trts_recommended_auc", "trts_rating4_auc", "word_overlap", "type_overlap", "ppl_median", "verbatim", "near_copy", "fit_s",
           "sample_s", "peak_rss_gb"]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (generator, epsilon): how many runs succeeded and the mean ± std of each ``SUMMARY`` metric."""
    out: list[dict[str, Any]] = []
    for name, eps in dict.fromkeys((r["generator"], r.get("eps_target")) for r in runs if "eps_target" in r):
        ok = [r for r in runs if (r["generator"], r.get("eps_target")) == (name, eps) and r["status"] == "ok"]
        out.append({"generator": name, "eps_target": eps, "n": len(ok),
                    **{m: mean_std(r.get(m) for r in ok) for m in SUMMARY}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="+", default=["scratch"], choices=sorted(GENERATORS))
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--set", action="append", default=[], help="generator override NAME.KEY=JSON")
    parser.add_argument("--rows", nargs="+", default=[], help="rows to sample: N for all and/or NAME=N (default "
                        "2000, incontext 20, smollm2-lora 64); a generator that writes rows while fitting may return fewer")
    parser.add_argument("--train-rows", type=int, default=2000, help="real training rows the generators fit")
    parser.add_argument("--test-rows", type=int, default=2000, help="real test rows (TSTR, reference metrics)")
    parser.add_argument("--max-length", type=int, default=200, help="review_text max_length (characters)")
    parser.add_argument("--perplexity-texts", type=int, default=100, help="texts scored by smollm2-135m (0: skip)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per generator and epsilon (a summary "
                        "gives mean ± std; the data split is fixed, each fit's randomness is its own)")
    parser.add_argument("--name", default="text", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return _one(args)
    overrides = _parse_overrides(args.set)
    load_before = [round(x, 2) for x in os.getloadavg()]
    train, test = load_split(train_rows=args.train_rows, test_rows=args.test_rows, max_length=args.max_length)
    evaluator = Evaluator(train, test, perplexity_texts=args.perplexity_texts)
    # The real test texts through the same metrics (their classifier row is TRTR on all training rows: a
    # classifier trained on the test texts themselves would score in-sample).
    reference = {"generator": "real test (reference)", "status": "real", **evaluator.evaluate(test),
                 **evaluator.classifiers(train, "trtr_")}
    reference = {k: v for k, v in reference.items() if not k.startswith("tstr_")}
    rows: list[dict[str, Any]] = [reference]
    print(table(rows, COLUMNS), flush=True)
    for name in args.generators:
        config = generator_config(name, overrides)
        reason = unsupported_reason(config, max_length=args.max_length)
        if reason is not None:
            print(f"{name}: unsupported by the installed code ({reason}); skipped", file=sys.stderr)
            rows.append({"generator": name, "status": "unsupported", "reason": reason, "config": config})
            continue
        for eps, repeat in ((e, k) for e in args.eps for k in range(args.repeats)):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "synthetic.parquet"
                result = run_child(name, eps, args, out)
                row: dict[str, Any] = {"generator": name, "eps_target": eps, "repeat": repeat, "config": config,
                                       **result}
                if result["status"] == "ok":
                    synthetic = pd.read_parquet(out)
                    row["rows_generated"] = len(synthetic)
                    row.update(evaluator.evaluate(synthetic))
                    row["eps_spent"] = round(result["epsilon"], 4)
                    tokens = row.get("smollm2_tokens") or 0
                    row["sample_ms_per_token"] = 1e3 * result["sample_s"] / tokens if tokens else None
                    # A generator that writes its texts while fitting (in-context generation reads the
                    # private rows per prompt) has its cost in fit_s: the total per token compares both kinds.
                    row["total_ms_per_token"] = (1e3 * (result["fit_s"] + result["sample_s"]) / tokens
                                                 if tokens else None)
                    row["sample_ms_per_byte"] = 1e3 * result["sample_s"] / max(1, row["utf8_bytes"])
                else:
                    print(f"{name} eps={eps}: {result['status']} ({result.get('reason')})", file=sys.stderr)
            rows.append(row)
            print(table(rows[-1:], COLUMNS), flush=True)
    print(table(rows, COLUMNS))
    summary = summarize(rows[1:]) if args.repeats > 1 else []
    if summary:
        print(f"\nmean ± std over {args.repeats} runs (each fit draws its own secret randomness)")
        print(table([{k: mean_std_text(v) if isinstance(v, dict) else v for k, v in s.items()} for s in summary],
                    ["generator", "eps_target", "n", *SUMMARY]))
    payload = {"rows": rows, "summary": summary, "repeats": args.repeats, "delta": DELTA, "seed": 0, "train_rows": len(train), "test_rows": len(test),
               "max_length": args.max_length, "rows_asked": {n: rows_for(n, args.rows) for n in args.generators}, "perplexity_model": "smollm2-135m",
               "perplexity_texts": args.perplexity_texts, "perplexity_note": evaluator.ppl_note,
               "load_avg_before": load_before, "load_avg_after": [round(x, 2) for x in os.getloadavg()],
               "torch_threads": os.environ.get("SAFESYNTH_TORCH_THREADS"), "numpy": np.__version__}
    print(f"wrote {write_results(args.name, payload)}")


if __name__ == "__main__":
    main()
