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
import dataclasses
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
from safesynth.sampling.cluster import plan_cluster, prewarm_workers  # noqa: E402
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


def single_process(spec: Any, model_dir: Path, tmp: Path, threads: int | None = None) -> dict[str, Any]:
    """The shards one after another in this process; torch on ``threads`` threads (None: every core)."""
    before = os.environ.pop("SAFESYNTH_TORCH_THREADS", None)
    if threads is not None:
        os.environ["SAFESYNTH_TORCH_THREADS"] = str(threads)
    try:
        return _single_process(spec, model_dir, tmp, threads)
    finally:
        os.environ.pop("SAFESYNTH_TORCH_THREADS", None)
        if before is not None:
            os.environ["SAFESYNTH_TORCH_THREADS"] = before


def _single_process(spec: Any, model_dir: Path, tmp: Path, threads: int | None) -> dict[str, Any]:
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
            "steady_rows_per_s": _steady(spec, done), "torch_threads": threads or len(os.sched_getaffinity(0))}


def _steady(spec: Any, done: list[float]) -> float:
    """Rows/s between the first and the last finished shard: throughput without the one-off start-up."""
    shards = shard_plan(spec)
    if len(done) < 2:
        return float("nan")
    return sum(s.rows for s in shards[1:]) / (done[-1] - done[0])


def _noop() -> None:
    pass


def prewarmed(spec: Any) -> None:
    """What a release does once its budget is reserved: the fork server imports the workers' modules.

    Waits until it is ready (a fit takes longer than that: minutes for an llm), so the clock that
    follows measures a sample stage that comes after a fit.
    """
    import multiprocessing

    assert prewarm_workers(spec)
    probe = multiprocessing.get_context("forkserver").Process(target=_noop)
    probe.start()
    probe.join()


def on_dask(spec: Any, model_dir: Path, workers: int, tmp: Path, threads: int | None = None,
            prewarm: bool = False) -> dict[str, Any]:
    """``threads``: torch threads per worker (None: the plan's, i.e. the cores split between workers)."""
    spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"workers": workers})})
    plan = plan_cluster(spec, shards=len(shard_plan(spec)))
    if threads is not None:
        plan = dataclasses.replace(plan, torch_threads=threads)
    if prewarm:
        prewarmed(spec)
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
    warm = ", prewarmed during fit" if prewarm else ""
    return {"what": f"dask, {workers} worker{'s' if workers > 1 else ''}{warm}", "rows": spec.sampling.rows,
            "seconds": seconds, "startup_s": max(0.0, startup), "steady_rows_per_s": steady,
            "torch_threads": plan.torch_threads, "client_rss_growth_mb": rss.growth_mb}


def in_child(spec: ReleaseSpec, model_dir: Path, workers: int, tmp: Path, threads: int | None = None,
             prewarm: bool = False) -> dict[str, Any]:
    """:func:`on_dask` in a fresh process (no fork server or Dask state left by an earlier runner)."""
    spec_json = tmp / f"spec-{workers}-{spec.sampling.rows}.json"
    spec_json.write_text(spec.model_dump_json())
    done = subprocess.run([sys.executable, __file__, "--child", str(spec_json), str(model_dir), str(workers),
                           str(threads or 0), str(int(prewarm))], check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


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
    parser.add_argument("--child", nargs=5, metavar=("SPEC_JSON", "MODEL_DIR", "WORKERS", "THREADS", "PREWARM"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.pop("SAFESYNTH_DASK_SCHEDULER", None)
    if args.child:  # one Dask runner in this fresh process; its result as the last line of stdout
        spec_json, model_dir, workers, threads, prewarm = args.child
        spec = ReleaseSpec.model_validate_json(Path(spec_json).read_text())
        with tempfile.TemporaryDirectory(prefix="safesynth-bench-child-") as out:
            print(json.dumps(on_dask(spec, Path(model_dir), int(workers), Path(out), int(threads) or None,
                                     prewarm=prewarm == "1")))
        return
    with tempfile.TemporaryDirectory(prefix="safesynth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        spec, model_dir = build_model(args.rows, args.shard_rows, tmp)
        small = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"rows": args.small_rows})})
        speed = loop_vs_generate(spec, model_dir, args.generate_rows)  # first: no Dask threads in this process yet
        # Scaling (the targets): every worker, and the single process, gets one core's torch thread.
        scaling = [single_process(spec, model_dir, _fresh(tmp / "single-1"), threads=1)]
        for workers in (1, 2):
            scaling.append(in_child(spec, model_dir, workers, tmp, threads=1))
        for workers in (1, 2):
            scaling.append(in_child(spec, model_dir, workers, tmp, threads=1, prewarm=True))
        # The defaults a release uses on this machine: the single process and one worker use every core.
        sized = [single_process(spec, model_dir, _fresh(tmp / "single"))]
        for workers in (1, 2):
            sized.append(in_child(spec, model_dir, workers, tmp))
        for workers in (1, 2):
            sized.append(in_child(spec, model_dir, workers, tmp, prewarm=True))
        memory = in_child(small, model_dir, 2, tmp)
        memory["what"] += f" ({args.small_rows} rows)"
        sized.append(memory)
    for row in scaling + sized + speed:
        row["rows_per_s"] = row["rows"] / row["seconds"]
    for series in (scaling, sized):
        single, one, two = (r["rows_per_s"] for r in series[:3])
        steady = [r["steady_rows_per_s"] for r in series[:3]]
        for row in series:
            row["vs_single"] = row["rows_per_s"] / single
            row["steady_vs_single"] = row["steady_rows_per_s"] / steady[0]
        series[2]["vs_1_worker"] = two / one
        series[2]["steady_vs_1_worker"] = steady[2] / steady[1]
        series[4]["vs_1_worker"] = series[4]["rows_per_s"] / series[3]["rows_per_s"]
        series[4]["steady_vs_1_worker"] = series[4]["steady_rows_per_s"] / series[3]["steady_rows_per_s"]
    speed[0]["vs_generate"] = speed[0]["rows_per_s"] / speed[1]["rows_per_s"]
    info = {"cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(), "shard_rows": args.shard_rows,
            "batch_size": spec.sampling.batch_size, "torch": torch.__version__}
    columns = ["what", "torch_threads", "rows", "seconds", "rows_per_s", "vs_single", "vs_1_worker", "startup_s",
               "steady_rows_per_s", "steady_vs_single", "steady_vs_1_worker", "client_rss_growth_mb"]
    print("one torch thread per worker and for the single process (scaling):")
    print(table(scaling, columns))
    print("machine-sized defaults (torch on every core; workers split the cores):")
    print(table(sized, columns))
    print(table(speed, ["what", "rows", "seconds", "rows_per_s", "vs_generate"]))
    checks = {}
    for label, series in (("one thread each", scaling), ("machine-sized", sized)):
        for start, offset in (("cold", 0), ("prewarmed during fit", 2)):
            checks[f"dask 1 worker within 10% of single, {label}, {start}"] = series[1 + offset]["vs_single"] >= 0.9
            checks[f"2 workers >= 1.7x 1 worker, {label}, {start}"] = series[2 + offset]["vs_1_worker"] >= 1.7
    checks.update({
              "our loop >= 3x generate": speed[0]["vs_generate"] >= 3.0,
              "client memory flat (200k vs 50k growth within 64 MB)":
                  sized[2]["client_rss_growth_mb"] <= sized[5]["client_rss_growth_mb"] + 64})
    for name, ok in checks.items():
        print(f"{'met' if ok else 'NOT met'}: {name}")
    print(info)
    print(f"wrote {write_results('sampling', {'scaling': scaling, 'machine_sized': sized, 'loop_vs_generate': speed, 'checks': checks, **info})}")


if __name__ == "__main__":
    main()
