"""The attack table on adult: every membership attack's AUC and TPR at 1 % FPR, per generator.

One command gives the table of the README's audit section:

    .venv/bin/python bench/audit_table.py                                  # full size (~15 min, 2 vCPUs)
    .venv/bin/python bench/audit_table.py --rows 3000 --generators marginals copy   # a quick look
    .venv/bin/python bench/audit_table.py --set epochs=4                   # cheaper llm fits
    SAFESYNTH_TORCH_THREADS=1 .venv/bin/python bench/audit_table.py        # on a machine others use

Data: ``adult.csv`` (48,842 rows), split 80/20 with :func:`common.split` (seed 0, as the other adult
benchmarks): the 39,074 training rows are fitted and are the members; the 9,768 held-out rows are never
fitted. Generators, each fitted on the training rows and sampling as many rows as it was fitted on:

* ``marginals`` at epsilon 1;
* ``llm`` at epsilon 1 and at epsilon 4, with the default ``generator: {kind: llm}`` that
  ``bench_quality.py`` runs on adult (2 layers, width 64, 12 epochs, batch 1024, lr 1e-2), on all the
  training rows: no cap on rows or epochs. A fit took about 6 minutes on 2 vCPUs with one torch thread
  (``SAFESYNTH_TORCH_THREADS=1``); with two threads and another job on the cores it took over 20, as
  OpenMP threads wait for a busy core;
* ``copy``: the synthetic table *is* the training rows (no privacy at all: claimed epsilon infinite).

Each synthetic table goes through the owner's full audit,
:func:`safesynth.audit.suite.run_suite`, as a release runs it: the holdout is split into the attacker's
reference rows (half) and the non-members (the other half, 4,884), members and non-members are attacked in
equal samples of at most ``audit.max_audit_rows`` (5,000, so 4,884 per side), and every attack of
``audit.attacks`` (distance-to-closest-record, DOMIAS, Gen-LRA, classifier) scores them; the risks
(singling-out, linkability) run too. The suite's generator is ``np.random.default_rng(seed)`` for every
table, so all four are attacked on the same members, non-members and reference rows.

Printed (markdown): per generator and attack the AUC with its 200-resample bootstrap 95 % interval, TPR at
1 % FPR with its exact (Clopper-Pearson) 95 % interval, and the AUC bound of the claimed epsilon
(:func:`~safesynth.audit.stats.auc_bound_for_epsilon` at delta 1e-5 and the epsilon the fit's account
spent: the synthetic rows' own epsilon, below the target because the plan keeps the audit's and the
repairs' shares, which a real release spends on its DP audit and repair count);
then the strongest attack per generator, the risks, and the times. Raw figures go to
``bench/results/audit_table[_rowsN].json``.

These are exact figures on private rows (the restricted zone of a release), measured here outside a
release; a release publishes only the DP maximum AUC. ``--seed`` sets the model initialisation, the
sampling and the audit's splits and bootstraps; the DP noise comes from the secure source and differs on
every run, so the DP generators' figures vary a little between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from common import ADULT_COLUMNS, DATA, load_typed, make_spec, run_release, split, write_results  # noqa: E402

from safesynth.audit.stats import AttackSummary, auc_bound_for_epsilon, max_over_attacks  # noqa: E402
from safesynth.audit.suite import SuiteResult, run_suite  # noqa: E402

DELTA = 1e-5
LOW_FPR = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One row group of the table: a generator (``copy``: the training rows) at a target epsilon."""

    name: str
    kind: str
    epsilon: float


CASES = (Case(name="marginals", kind="marginals", epsilon=1.0), Case(name="llm-eps1", kind="llm", epsilon=1.0),
         Case(name="llm-eps4", kind="llm", epsilon=4.0), Case(name="copy", kind="copy", epsilon=math.inf))


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value not in ("", "None") else None
    return out


def _cap(frame: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    if rows is None or len(frame) <= rows:
        return frame
    return frame.sample(rows, random_state=seed).reset_index(drop=True)


def _synthetic(case: Case, train: pd.DataFrame, *, llm: dict[str, Any],
               seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The case's synthetic rows and its fit record (claimed epsilon, times, budget stages)."""
    if case.kind == "copy":
        return train.copy(), {"claimed_epsilon": math.inf, "fit_s": 0.0, "sample_s": 0.0}
    generator = {"kind": case.kind, **(llm if case.kind == "llm" else {})}
    spec = make_spec(ADULT_COLUMNS, source=str(DATA / "adult.csv"), epsilon=case.epsilon, delta=DELTA,
                     generator=generator, rows=len(train), base_dir=Path.cwd(), seed=seed)
    release = run_release(case.kind, train, spec, rows=len(train), seed=seed)
    synthetic = release.pop("synthetic")
    release.pop("fitted")
    return synthetic, {"claimed_epsilon": release.pop("epsilon"), "generator_config": generator, **release}


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]"


def _row(case: Case, claimed: float, summary: AttackSummary) -> dict[str, Any]:
    tpr = summary.tpr_at_fpr[LOW_FPR]
    return {"generator": case.name, "epsilon_target": case.epsilon, "epsilon_claimed": claimed,
            "attack": summary.attack, "auc": summary.auc, "auc_interval": list(summary.auc_interval),
            "tpr_at_1pct_fpr": tpr.value, "tpr_interval": [tpr.lower, tpr.upper],
            "auc_bound": auc_bound_for_epsilon(epsilon=claimed, delta=DELTA),
            "members": summary.members, "non_members": summary.non_members}


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| generator | target ε | claimed ε | attack | AUC | 95 % interval | TPR at 1 % FPR (95 % interval) "
             "| AUC bound of claimed ε |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if math.isinf(r["epsilon_target"]) else f"{r['epsilon_target']:g}"
        claimed = "∞" if math.isinf(r["epsilon_claimed"]) else f"{r['epsilon_claimed']:.3g}"
        lines.append(f"| {r['generator']} | {target} | {claimed} | {r['attack']} | {r['auc']:.3f} | "
                     f"{_interval(*r['auc_interval'])} | {r['tpr_at_1pct_fpr']:.3f} {_interval(*r['tpr_interval'])} | "
                     f"{r['auc_bound']:.3f} |")
    return "\n".join(lines)


def _risks(case: Case, result: SuiteResult) -> list[dict[str, Any]]:
    return [{"generator": case.name, "risk": r.attack, "value": r.risk.value, "interval": list(r.risk.ci),
             "attack_rate": r.attack_rate.value, "control_rate": r.control_rate.value}
            for r in result.report.risks]


def _report(rows: list[dict[str, Any]], strongest: list[dict[str, Any]], risks: list[dict[str, Any]],
            runs: list[dict[str, Any]]) -> None:
    print("\n" + _markdown(rows))
    print("\nStrongest attack per generator (highest AUC):\n\n" + _markdown(strongest))
    print("\n| generator | risk | value | 95 % interval |\n|---|---|---|---|")
    for r in risks:
        print(f"| {r['generator']} | {r['risk']} | {r['value']:.3f} | {_interval(*r['interval'])} |")
    print("\n| generator | rows | fit s | sample s | audit s |\n|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['generator']} | {r['rows']} | {r['fit_s']:.1f} | {r['sample_s']:.1f} | {r['audit_s']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None,
                        help="at most this many training rows (fitted, and as many sampled) and held-out rows")
    parser.add_argument("--generators", nargs="+", choices=[c.name for c in CASES], default=[c.name for c in CASES])
    parser.add_argument("--set", action="append", default=[], help="llm generator override KEY=JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    llm = _parse_overrides(args.set)

    path = DATA / "adult.csv"
    spec = make_spec(ADULT_COLUMNS, source=str(path), epsilon=1.0, delta=DELTA, generator={"kind": "marginals"},
                     rows=1, base_dir=Path.cwd(), seed=args.seed)
    train, holdout = split(load_typed(path, spec))
    train, holdout = _cap(train, args.rows, args.seed), _cap(holdout, args.rows, args.seed + 1)
    print(f"adult: {len(train)} training rows (members), {len(holdout)} held out; "
          f"cpus {os.cpu_count()}, load {[round(x, 2) for x in os.getloadavg()]}", flush=True)

    rows: list[dict[str, Any]] = []
    strongest: list[dict[str, Any]] = []
    risks: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    payload = {"train_rows": len(train), "holdout_rows": len(holdout), "delta": DELTA, "seed": args.seed,
               "llm_overrides": llm, "attacks": rows, "strongest": strongest, "risks": risks, "runs": runs,
               "cpus": os.cpu_count()}
    name = "audit_table" + ("" if args.rows is None else f"_rows{args.rows}")
    for case in (c for c in CASES if c.name in args.generators):
        synthetic, fit = _synthetic(case, train, llm=llm, seed=args.seed)
        claimed = float(fit["claimed_epsilon"])
        start = time.perf_counter()
        result = run_suite(spec=spec, train=train, holdout=holdout, synthetic=synthetic, epsilon=claimed,
                           delta=DELTA, rng=np.random.default_rng(args.seed))
        audit_s = time.perf_counter() - start
        summaries = [a.summary for a in result.report.attacks]
        rows += [_row(case, claimed, s) for s in summaries]
        if summaries:
            strongest.append(_row(case, claimed, max_over_attacks(summaries)))
        risks += _risks(case, result)
        runs.append({"generator": case.name, "rows": len(synthetic), "audit_s": audit_s, "failed": result.failed,
                     "warnings": result.report.warnings(),
                     "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()], **fit})
        print(f"{case.name}: fit {fit['fit_s']:.1f} s, sample {fit['sample_s']:.1f} s, audit {audit_s:.1f} s; "
              f"claimed epsilon {claimed:.4g}" + (f"; could not measure {result.failed}" if result.failed else ""),
              flush=True)
        for warning in result.report.warnings():
            print(f"  WARNING {warning}", flush=True)
        write_results(name, payload)  # after every generator: a long run that dies keeps what it measured

    _report(rows, strongest, risks, runs)
    print(f"\nresults: {write_results(name, payload)}")


if __name__ == "__main__":
    main()
