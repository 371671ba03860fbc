"""Diagnostic: where the llm's 2-way error comes from. Fit once, then keep rows with different calibration targets.

Fits the default llm on adult (the bench's fixed 80/20 split), generates ``calibrate_oversample`` x the rows
once, and keeps a raking-weighted subset (:mod:`safesynth.generator.calibrate`) for each set of targets:

* ``none``: the model's own rows; ``oneway``: MST's 1-way marginals only; ``default``: MST's 1-way and
  measured 2-way marginals (what a release does); ``mst_allpairs``: the default plus MST's inferred 2-way
  marginal of every other pair (estimated from 400,000 of its rows);
* ``oracle_measured`` / ``oracle_allpairs``: the *true* training marginals as targets. Never a product
  option: they only measure how much of the error is the targets' DP noise and how much is the model;
* ``temperature``: the default calibration on rows sampled at ``--temperature``.

Prints and writes (bench/results/NAME.json) 1-way / 2-way TVD and TSTR ROC AUC per variant.

    SAFESYNTH_TORCH_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python bench/calibration_targets.py --seed 0 --name s9_cal
    ... --set epochs=6 --name s9_cal_e6
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import safesynth.generator.llm.backend as backend
from safesynth.audit.utility import marginal_tvd, tstr
from safesynth.generator.calibrate import Calibration, Target

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ADULT_COLUMNS, DATA, RESULTS, load_typed, make_spec, run_release, split  # noqa: E402


def _tables(cells: np.ndarray, shape: dict[int, int], marginals: list[tuple[int, ...]]) -> tuple[Target, ...]:
    """The empirical marginal of ``cells`` (columns x rows, grid cells) on each tuple of columns, as targets
    (cells past a table's edge clip into it, as the raking does)."""
    out = []
    for columns in marginals:
        dims = tuple(shape[c] for c in columns)
        index = np.ravel_multi_index(tuple(cells[c] for c in columns), dims, mode="clip")
        out.append(Target(columns=columns, table=(np.bincount(index, minlength=int(np.prod(dims))) / cells.shape[1])
                          .reshape(dims)))
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="llm generator override KEY=JSON")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--name", default="calibration_targets")
    parser.add_argument("--rows", type=int, default=None, help="fit on the first N training rows (smoke)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("safesynth").setLevel(logging.INFO)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}

    captured: dict[str, Any] = {}
    warm_start = backend.warm_start

    def keep_model(*a: Any, **k: Any) -> Any:  # the MST model, for its inferred pairs
        captured["mst"] = warm_start(*a, **k)
        return captured["mst"]

    backend.warm_start = keep_model  # type: ignore[assignment]
    source = DATA / "adult.csv"
    frame = load_typed(source, make_spec(ADULT_COLUMNS, source=str(source), epsilon=args.eps, delta=1e-5,
                                         generator={"kind": "llm"}, rows=1, base_dir=Path.cwd()))
    train, holdout = split(frame)
    train = train if args.rows is None else train.iloc[: args.rows]
    n = len(train)
    spec = make_spec(ADULT_COLUMNS, source=str(source), epsilon=args.eps, delta=1e-5,
                     generator={"kind": "llm", **overrides}, rows=n, base_dir=Path.cwd(), seed=args.seed,
                     target="income")
    fit = run_release("llm", train, spec, rows=n, seed=args.seed)
    fitted, cal = fit["fitted"], fit["fitted"].calibration
    if cal is None:
        raise SystemExit("this spec has no calibration (warm_start: mst and calibrate are needed)")
    results: dict[str, Any] = {"fit_s": fit["fit_s"], "sample_s": fit["sample_s"], "variants": {}}

    def score(name: str, rows: pd.DataFrame) -> None:
        m = marginal_tvd(train, rows, spec)
        u = tstr(rows, holdout, target="income", positive=">50K")
        results["variants"][name] = {"tvd_1way": m["tvd_1way"], "tvd_2way": m["tvd_2way"],
                                     "tvd_2way_max": m["tvd_2way_max"], "tstr_roc_auc": u["roc_auc"]}
        print(name, {k: round(v, 4) for k, v in results["variants"][name].items()}, flush=True)

    def keep(name: str, targets: tuple[Target, ...]) -> None:
        chosen = Calibration(bins=cal.bins, targets=targets, oversample=cal.oversample)
        score(name, chosen.select(candidates, n, spec=spec, seed=args.seed))

    score("default", fit["synthetic"])
    candidates = fitted._generate(n * cal.oversample, seed=args.seed)
    score("none", candidates.iloc[:n].reset_index(drop=True))
    one = tuple(t for t in cal.targets if len(t.columns) == 1)
    keep("oneway", one)
    shape = {t.columns[0]: t.table.shape[0] for t in one}
    measured = sorted(t.columns for t in cal.targets if len(t.columns) == 2)
    every = list(itertools.combinations(sorted(shape), 2))
    unmeasured = [p for p in every if p not in measured and p[::-1] not in measured]
    mst_cells = cal.cells(captured["mst"].sample(400_000, seed=args.seed + 99), spec)
    keep("mst_allpairs", (*cal.targets, *_tables(mst_cells, shape, unmeasured)))
    true_cells = cal.cells(train, spec)
    true_one = _tables(true_cells, shape, [t.columns for t in one])
    keep("oracle_measured", true_one + _tables(true_cells, shape, measured))
    keep("oracle_allpairs", true_one + _tables(true_cells, shape, every))
    fitted.spec = spec.model_copy(update={"generator": spec.generator.model_copy(
        update={"temperature": args.temperature})})
    score(f"temperature_{args.temperature:g}", fitted.sample(n, seed=args.seed))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"wrote {RESULTS / (args.name + '.json')}")


if __name__ == "__main__":
    main()
