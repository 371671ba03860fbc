"""Distributed sampling throughput: one process vs Dask with 1 and 2 local workers, in the same run.

The model is the default ``generator: {kind: llm}`` on adult-shaped rows, built from its config and not
trained (speed does not depend on the weights), saved once and loaded by every runner. Every runner does
the same work per shard: sample ``shard_rows`` rows and encode them as a Parquet part.

* ``single process``: the shards one after another in this process, as the sample stage did before Dask
  (torch uses every core).
* ``dask, N workers``: :func:`safesynth.sampling.sample_on_cluster` on a LocalCluster of N worker
  processes (one thread each, torch threads split between them), cluster start-up included and reported.
* client memory: the peak RSS growth of this process while Dask samples 50k and 200k rows (it should not
  grow with the rows: parts go from the workers to disk, only metadata comes back).
* ``our loop`` vs ``model.generate`` with the same vectorised grammar processor, same batch size.

    .venv/bin/python bench/bench_sampling.py                 # 200,000 rows (several minutes on 2 cores)
    .venv/bin/python bench/bench_sampling.py --rows 20000    # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import torch  # noqa: E402
from common import ADULT_COLUMNS, DATA, make_spec, table, write_results  # noqa: E402

from safesynth.generator.llm import FittedLLM  # noqa: E402
from safesynth.generator.llm.encoding import BOS, RowCodec  # noqa: E402
from safesynth.generator.llm.grammar import Grammar  # noqa: E402
from safesynth.generator.llm.model import build_language_model, torch_threads  # noqa: E402
from safesynth.generator.llm.sampling import sample_tokens, sample_tokens_generate  # noqa: E402
from safesynth.sampling import sample_on_cluster, scratch_for, shard_plan  # noqa: E402
from safesynth.sampling.cluster import plan_cluster  # noqa: E402
from safesynth.sampling.parts import encode_part  # noqa: E402


class PeakRSS:
    """The peak resident memory of this process above its level at start, sampled every 20 ms."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def build_model(rows: int, shard_rows: int, workdir: Path) -> tuple[Any, Path]:
    spec = make_spec(ADULT_COLUMNS, source=str(DATA / "adult.csv"), epsilon=4.0, delta=1e-5,
                     generator={"kind": "llm"}, rows=rows, base_dir=workdir)
    spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"shard_rows": shard_rows})})
    gen = spec.generator
    codec = RowCodec.from_spec(spec, context_length=gen.context_length, names=gen.random_column_order)
    order = list(range(len(codec.columns)))
    model = FittedLLM(spec=spec, codec=codec, grammar=Grammar(codec, order=order),
                      lm=build_language_model(gen, codec.symbols, seed=0), order=tuple(order), condition=None,
                      privacy={})
    model.save(workdir / "model")
    return spec, workdir / "model"


def single_process(spec: Any, model_dir: Path) -> dict[str, Any]:
    model = FittedLLM.load(model_dir, spec=spec)
    start = time.perf_counter()
    for shard in shard_plan(spec):
        encode_part(model.sample(shard.rows, seed=shard.seed), spec)
    seconds = time.perf_counter() - start
    return {"what": "single process", "rows": spec.sampling.rows, "seconds": seconds}


def on_dask(spec: Any, model_dir: Path, workers: int, tmp: Path) -> dict[str, Any]:
    spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"workers": workers})})
    plan = plan_cluster(spec, shards=len(shard_plan(spec)))
    first: list[float] = []
    start = time.perf_counter()
    with PeakRSS() as rss:
        rows = sample_on_cluster(spec, model_dir, scratch_for(spec, model_dir, tmp, dataset="bench", release_id="b"),
                                 plan=plan, progress=lambda p: first.append(time.perf_counter()) if not first else None)
    seconds = time.perf_counter() - start
    assert rows.rows == spec.sampling.rows
    # Start-up (cluster, worker imports, model load) is what passes before the first shard's sampling.
    startup = first[0] - start - seconds / len(rows.parts) if first else float("nan")
    return {"what": f"dask, {workers} worker{'s' if workers > 1 else ''}", "rows": spec.sampling.rows,
            "seconds": seconds, "startup_s": max(0.0, startup), "torch_threads": plan.torch_threads,
            "client_rss_growth_mb": rss.growth_mb}


def loop_vs_generate(spec: Any, model_dir: Path, rows: int) -> list[dict[str, Any]]:
    model = FittedLLM.load(model_dir, spec=spec)
    batch = spec.sampling.batch_size
    order = model._order_tokens
    prompts = torch.full((batch, 1), BOS, dtype=torch.long)
    calls = max(1, rows // batch)
    out = []
    with torch_threads():
        for name, fn in (
            ("our loop", lambda b: sample_tokens(model.lm, model.grammar, prompts=prompts, order=order,
                                                 temperature=1.0, generator=torch.Generator().manual_seed(b))),
            ("model.generate + vectorised mask", lambda b: sample_tokens_generate(
                model.lm, model.grammar, prompts=prompts, order=order, temperature=1.0, seed=b)),
        ):
            fn(0)  # warm-up
            start = time.perf_counter()
            for b in range(calls):
                fn(b)
            seconds = time.perf_counter() - start
            out.append({"what": f"{name} (batch {batch})", "rows": calls * batch, "seconds": seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--small-rows", type=int, default=50_000, help="the second size for client memory")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--generate-rows", type=int, default=8_192, help="rows for loop vs generate")
    args = parser.parse_args()
    os.environ.pop("SAFESYNTH_DASK_SCHEDULER", None)
    with tempfile.TemporaryDirectory(prefix="safesynth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        spec, model_dir = build_model(args.rows, args.shard_rows, tmp)
        small = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"rows": args.small_rows})})
        results = [single_process(spec, model_dir)]
        for workers in (1, 2):
            results.append(on_dask(spec, model_dir, workers, tmp / f"w{workers}"))
        memory = on_dask(small, model_dir, 2, tmp / "small")
        memory["what"] += f" ({args.small_rows} rows)"
        results.append(memory)
        speed = loop_vs_generate(spec, model_dir, args.generate_rows)
    for row in results + speed:
        row["rows_per_s"] = row["rows"] / row["seconds"]
    single, one, two = results[0]["rows_per_s"], results[1]["rows_per_s"], results[2]["rows_per_s"]
    for row in results:
        row["vs_single"] = row["rows_per_s"] / single
    results[2]["vs_1_worker"] = two / one
    speed[0]["vs_generate"] = speed[0]["rows_per_s"] / speed[1]["rows_per_s"]
    info = {"cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(), "shard_rows": args.shard_rows,
            "batch_size": spec.sampling.batch_size, "torch": torch.__version__}
    print(table(results, ["what", "rows", "seconds", "rows_per_s", "vs_single", "vs_1_worker", "startup_s",
                          "torch_threads", "client_rss_growth_mb"]))
    print(table(speed, ["what", "rows", "seconds", "rows_per_s", "vs_generate"]))
    checks = {"dask 1 worker within 10% of single": one >= 0.9 * single, "2 workers >= 1.7x 1 worker": two >= 1.7 * one,
              "our loop >= 3x generate": speed[0]["vs_generate"] >= 3.0,
              "client memory flat (200k vs 50k growth within 64 MB)":
                  results[2]["client_rss_growth_mb"] <= results[3]["client_rss_growth_mb"] + 64}
    for name, ok in checks.items():
        print(f"{'met' if ok else 'NOT met'}: {name}")
    print(info)
    print(f"wrote {write_results('sampling', {'results': results, 'loop_vs_generate': speed, 'checks': checks, **info})}")


if __name__ == "__main__":
    main()
