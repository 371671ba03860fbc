"""Speed of the privacy audit on adult: every registered tabular attack and the anonymeter-style risks.

Data: ``adult.csv`` (48,842 rows), split 80/20 with :func:`common.split` (seed 0): the 39,074 training rows
are the members; the 9,768 held-out rows are halved (seed 1) into the attacker's reference rows (4,884)
and the non-members (4,884: as many as exist). The synthetic table is 40,000 rows from the marginals
generator (:func:`common.run_release`, epsilon 1; fit and sampling are timed apart from the audit), or
with ``--synthetic resample`` 40,000 training rows drawn with replacement with Gaussian noise of 2 % of
each numeric column's declared range (a leaky release: the attacks then score well above 0.5).

Timed per attack: the scores of all members and non-members, plus :func:`summarize_attack` (AUC with a
200-resample bootstrap interval, TPR at FPR 1 % and 0.1 %). Timed per risk, with default settings:
attribute inference on ``income``, univariate singling-out, linkability of two column halves (each
attacks equal samples of at most 5,000 members and non-members: here 4,884 per side). The target of
issue 10: the whole audit under 3 minutes on the 2-core machine.

    .venv/bin/python bench/bench_audit.py                 # full size
    .venv/bin/python bench/bench_audit.py --rows 5000     # at most 5,000 rows per table
    .venv/bin/python bench/bench_audit.py --synthetic resample
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import ADULT_COLUMNS, DATA, load_typed, make_spec, run_release, split, table, write_results  # noqa: E402

from safesynth.audit.attacks import ATTACKS, attribute_inference, create_attack, linkability, singling_out  # noqa: E402
from safesynth.audit.stats import summarize_attack  # noqa: E402
from safesynth.spec import FloatColumn, IntegerColumn, ReleaseSpec  # noqa: E402

TARGET_S = 180.0
SYNTHETIC_ROWS = 40_000
LINK_HALVES = (("age", "sex", "race", "native_country", "marital_status", "relationship"),
               ("workclass", "education", "occupation", "hours_per_week", "capital_gain", "capital_loss"))


def _cap(frame: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    if rows is None or len(frame) <= rows:
        return frame
    return frame.sample(rows, random_state=seed).reset_index(drop=True)


def _resampled(train: pd.DataFrame, spec: ReleaseSpec, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = train.iloc[rng.integers(0, len(train), rows)].reset_index(drop=True)
    for name, col in spec.columns.items():
        if isinstance(col, IntegerColumn | FloatColumn):
            lo, hi = float(col.min), float(col.max)
            values = out[name].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            noisy = np.clip(values + rng.normal(0.0, 0.02 * (hi - lo), rows), lo, hi)
            out[name] = pd.array(np.round(noisy) if isinstance(col, IntegerColumn) else noisy,
                                 dtype=out[name].dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="cap on the rows of every table (quick runs)")
    parser.add_argument("--synthetic", choices=["marginals", "resample"], default="marginals")
    args = parser.parse_args()

    path = DATA / "adult.csv"
    spec = make_spec(ADULT_COLUMNS, source=str(path), epsilon=1.0, delta=1e-5, generator={"kind": "marginals"},
                     rows=1, base_dir=Path.cwd())
    train, holdout = split(load_typed(path, spec))
    reference, non_members = split(holdout, holdout=0.5, seed=1)
    members = _cap(train, args.rows, 2)
    reference, non_members = _cap(reference, args.rows, 3), _cap(non_members, args.rows, 4)
    n_syn = min(SYNTHETIC_ROWS, args.rows or SYNTHETIC_ROWS)
    generation: dict[str, Any] = {"kind": args.synthetic}
    if args.synthetic == "marginals":
        release = run_release("marginals", train, spec, rows=n_syn, seed=0)
        synthetic = release.pop("synthetic")
        release.pop("fitted")
        generation.update(fit_s=release["fit_s"], sample_s=release["sample_s"])
    else:
        synthetic = _resampled(train, spec, n_syn, seed=5)
    sizes = {"members": len(members), "non_members": len(non_members), "reference": len(reference),
             "synthetic": len(synthetic)}
    print(f"sizes: {sizes}; synthetic: {generation}", flush=True)

    rows: list[dict[str, Any]] = []
    targets = pd.concat([members, non_members], ignore_index=True)
    for name in sorted(ATTACKS):
        start = time.perf_counter()
        scores = create_attack(name).scores(synthetic=synthetic, reference=reference, targets=targets, spec=spec)
        scored = time.perf_counter() - start
        summary = summarize_attack(scores[:len(members)], scores[len(members):], attack=name,
                                   rng=np.random.default_rng(0))
        seconds = time.perf_counter() - start
        rows.append({"attack": name, "seconds": round(seconds, 2), "scoring_s": round(scored, 2),
                     "auc": round(summary.auc, 4), "ci": f"[{summary.auc_interval[0]:.3f}, {summary.auc_interval[1]:.3f}]",
                     "tpr@1%": round(summary.tpr_at_fpr[0.01].value, 4)})
        print(table(rows[-1:], list(rows[-1])), flush=True)

    risks = {
        "inference:income": lambda rng: attribute_inference(
            synthetic=synthetic, members=members, non_members=non_members, secret="income", spec=spec, rng=rng),
        "singling-out": lambda rng: singling_out(
            synthetic=synthetic, members=members, non_members=non_members, spec=spec, rng=rng),
        "linkability": lambda rng: linkability(
            synthetic=synthetic, members=members, non_members=non_members, aux_columns=LINK_HALVES, spec=spec,
            rng=rng),
    }
    for name, evaluate in risks.items():
        start = time.perf_counter()
        result = evaluate(np.random.default_rng(0))
        seconds = time.perf_counter() - start
        rows.append({"attack": name, "seconds": round(seconds, 2), "scoring_s": round(seconds, 2),
                     "auc": "", "ci": f"risk {result.risk.value:.3f} [{result.risk.ci[0]:.3f}, {result.risk.ci[1]:.3f}]",
                     "tpr@1%": ""})
        print(table(rows[-1:], list(rows[-1])), flush=True)

    total = sum(float(r["seconds"]) for r in rows)
    met = total < TARGET_S
    print()
    print(table(rows, ["attack", "seconds", "auc", "ci", "tpr@1%"]))
    print(f"\ntotal {total:.1f} s; target {TARGET_S:.0f} s: {'met' if met else 'NOT met'} "
          f"(cpus {os.cpu_count()}, load {[round(x, 2) for x in os.getloadavg()]})")
    suffix = "" if args.rows is None else f"_rows{args.rows}"
    out = write_results(f"audit_{args.synthetic}{suffix}", {
        "sizes": sizes, "synthetic": generation, "attacks": rows, "total_s": total, "target_s": TARGET_S,
        "target_met": met, "cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
