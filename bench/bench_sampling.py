"""Distributed sampling throughput: one process vs Dask with 1 and 2 local workers, in the same run.

The model is the default ``generator: {kind: llm}`` on adult-shaped rows, built from its config and not
trained (speed does not depend on the weights), saved once and loaded by every runner. Every runner does
the same work per shard: sample ``shard_rows`` rows and encode them as a Parquet part.

* ``single process``: the shards one after another in this process, as the sample stage did before Dask
  (torch uses every core).
* ``dask, N workers``: :func:`safesynth.sampling.sample_on_cluster` on a LocalCluster of N worker
  processes (one thread each, torch threads split between them), cluster start-up included and reported.
  Each Dask runner runs in a fresh child process (imports done before the clock starts, as for the
  single process), so none of them reuses the fork server an earlier runner started.
* client memory: the peak RSS growth of this process while Dask samples 50k and 200k rows (it should not
  grow with the rows: parts go from the workers to disk, only metadata comes back).
* ``our loop`` vs ``model.generate`` with the same vectorised grammar processor, same batch size.

    .venv/bin/python bench/bench_sampling.py                 # 200,000 rows (several minutes on 2 cores)
    .venv/bin/python bench/bench_sampling.py --rows 20000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
from safesynth.sampling.parts import encode_part, write_bytes  # noqa: E402
from safesynth.spec import ReleaseSpec  # noqa: E402


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


def single_process(spec: Any, model_dir: Path, tmp: Path) -> dict[str, Any]:
    start = time.perf_counter()
    model = FittedLLM.load(model_dir, spec=spec)
    loaded = time.perf_counter()
    done = []
    for shard in shard_plan(spec):
        write_bytes(str(tmp / f"part-{shard.index:05d}.parquet"), encode_part(model.sample(shard.rows, seed=shard.seed),
                                                                              spec))
        done.append(time.perf_counter())
    seconds = time.perf_counter() - start
    return {"what": "single process", "rows": spec.sampling.rows, "seconds": seconds, "startup_s": loaded - start,
            "steady_rows_per_s": _steady(spec, done)}


def _steady(spec: Any, done: list[float]) -> float:
    """Rows/s between the first and the last finished shard: throughput without the one-off start-up."""
    shards = shard_plan(spec)
    if len(done) < 2:
        return float("nan")
    return sum(s.rows for s in shards[1:]) / (done[-1] - done[0])


def on_dask(spec: Any, model_dir: Path, workers: int, tmp: Path) -> dict[str, Any]:
    spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"workers": workers})})
    plan = plan_cluster(spec, shards=len(shard_plan(spec)))
    done: list[float] = []
    start = time.perf_counter()
    with PeakRSS() as rss:
        rows = sample_on_cluster(spec, model_dir, scratch_for(spec, model_dir, tmp, dataset="bench", release_id="b"),
                                 plan=plan, progress=lambda p: done.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    assert rows.rows == spec.sampling.rows
    steady = _steady(spec, done)
    # Start-up (cluster, worker imports, model load): the time not explained by the steady rate.
    startup = seconds - spec.sampling.rows / steady
    return {"what": f"dask, {workers} worker{'s' if workers > 1 else ''}", "rows": spec.sampling.rows,
            "seconds": seconds, "startup_s": max(0.0, startup), "steady_rows_per_s": steady,
            "torch_threads": plan.torch_threads, "client_rss_growth_mb": rss.growth_mb}


def in_child(spec: ReleaseSpec, model_dir: Path, workers: int, tmp: Path) -> dict[str, Any]:
    """:func:`on_dask` in a fresh process (no fork server or Dask state left by an earlier runner)."""
    spec_json = tmp / f"spec-{workers}-{spec.sampling.rows}.json"
    spec_json.write_text(spec.model_dump_json())
    done = subprocess.run([sys.executable, __file__, "--child", str(spec_json), str(model_dir), str(workers)],
                          check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def loop_vs_generate(spec: Any, model_dir: Path, rows: int, rounds: int = 3) -> list[dict[str, Any]]:
    """Best of ``rounds`` interleaved rounds (a burst of load from elsewhere hits both methods alike)."""
    model = FittedLLM.load(model_dir, spec=spec)
    batch = spec.sampling.batch_size
    order = model._order_tokens
    prompts = torch.full((batch, 1), BOS, dtype=torch.long)
    calls = max(1, rows // batch)
    methods = {
        "our loop": lambda b: sample_tokens(model.lm, model.grammar, prompts=prompts, order=order, temperature=1.0,
                                            generator=torch.Generator().manual_seed(b)),
        "model.generate + vectorised mask": lambda b: sample_tokens_generate(
            model.lm, model.grammar, prompts=prompts, order=order, temperature=1.0, seed=b),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    with torch_threads():
        for fn in methods.values():
            fn(0)  # warm-up
        for _ in range(rounds):
            for name, fn in methods.items():
                start = time.perf_counter()
                for b in range(calls):
                    fn(b)
                seconds[name].append(time.perf_counter() - start)
    return [{"what": f"{name} (batch {batch})", "rows": calls * batch, "seconds": min(t)} for name, t in seconds.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--small-rows", type=int, default=50_000, help="the second size for client memory")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--generate-rows", type=int, default=8_192, help="rows for loop vs generate")
    parser.add_argument("--child", nargs=3, metavar=("SPEC_JSON", "MODEL_DIR", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.pop("SAFESYNTH_DASK_SCHEDULER", None)
    if args.child:  # one Dask runner in this fresh process; its result as the last line of stdout
        spec_json, model_dir, workers = args.child
        spec = ReleaseSpec.model_validate_json(Path(spec_json).read_text())
        with tempfile.TemporaryDirectory(prefix="safesynth-bench-child-") as out:
            print(json.dumps(on_dask(spec, Path(model_dir), int(workers), Path(out))))
        return
    with tempfile.TemporaryDirectory(prefix="safesynth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        spec, model_dir = build_model(args.rows, args.shard_rows, tmp)
        small = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"rows": args.small_rows})})
        speed = loop_vs_generate(spec, model_dir, args.generate_rows)  # first: no Dask threads in this process yet
        (tmp / "single").mkdir()
        results = [single_process(spec, model_dir, tmp / "single")]
        for workers in (1, 2):
            results.append(in_child(spec, model_dir, workers, tmp))
        memory = in_child(small, model_dir, 2, tmp)
        memory["what"] += f" ({args.small_rows} rows)"
        results.append(memory)
    for row in results + speed:
        row["rows_per_s"] = row["rows"] / row["seconds"]
    single, one, two = results[0]["rows_per_s"], results[1]["rows_per_s"], results[2]["rows_per_s"]
    steady = [r["steady_rows_per_s"] for r in results[:3]]
    for row in results:
        row["vs_single"] = row["rows_per_s"] / single
        row["steady_vs_single"] = row["steady_rows_per_s"] / steady[0]
    results[2]["vs_1_worker"] = two / one
    results[2]["steady_vs_1_worker"] = steady[2] / steady[1]
    speed[0]["vs_generate"] = speed[0]["rows_per_s"] / speed[1]["rows_per_s"]
    info = {"cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(), "shard_rows": args.shard_rows,
            "batch_size": spec.sampling.batch_size, "torch": torch.__version__}
    print(table(results, ["what", "rows", "seconds", "rows_per_s", "vs_single", "vs_1_worker", "startup_s",
                          "steady_rows_per_s", "steady_vs_single", "steady_vs_1_worker", "torch_threads",
                          "client_rss_growth_mb"]))
    print(table(speed, ["what", "rows", "seconds", "rows_per_s", "vs_generate"]))
    checks = {"dask 1 worker within 10% of single (end to end)": one >= 0.9 * single,
              "dask 1 worker within 10% of single (steady state)": steady[1] >= 0.9 * steady[0],
              "2 workers >= 1.7x 1 worker (end to end)": two >= 1.7 * one,
              "2 workers >= 1.7x 1 worker (steady state)": steady[2] >= 1.7 * steady[1],
              "our loop >= 3x generate": speed[0]["vs_generate"] >= 3.0,
              "client memory flat (200k vs 50k growth within 64 MB)":
                  results[2]["client_rss_growth_mb"] <= results[3]["client_rss_growth_mb"] + 64}
    for name, ok in checks.items():
        print(f"{'met' if ok else 'NOT met'}: {name}")
    print(info)
    print(f"wrote {write_results('sampling', {'results': results, 'loop_vs_generate': speed, 'checks': checks, **info})}")


if __name__ == "__main__":
    main()
