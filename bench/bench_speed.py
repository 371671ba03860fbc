"""Speed of the llm generator on adult-shaped rows (an untrained model: speed does not depend on weights).

Training: DP-SGD steps (ghost clipping and hooks) vs non-private steps of the same model on the same
batches, in the same run. Sampling: our KV-cached loop (with the Llama decoder, and through the HF
forward as for a non-Llama model) vs ``model.generate`` with the same vectorised grammar processor at
the same batch size, and vs ``model.generate`` with a per-row Python grammar processor (the naive way);
plus our loop at larger batches. Sampling methods run in interleaved rounds; the best round counts.

    .venv/bin/python bench/bench_speed.py
    .venv/bin/python bench/bench_speed.py --skip-training --rounds 5
    .venv/bin/python bench/bench_speed.py --rows 8192 --set hidden_size=96
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ADULT_COLUMNS, DATA, load_typed, make_spec, split, table, write_results  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

from safesynth.generator.llm.encoding import EOS, RowCodec  # noqa: E402
from safesynth.generator.llm.grammar import Grammar  # noqa: E402
from safesynth.generator.llm.model import build_language_model, norms_for_opacus, torch_threads  # noqa: E402
from safesynth.generator.llm.sampling import sample_tokens, sample_tokens_generate  # noqa: E402
from safesynth.generator.llm.training import (  # noqa: E402
    DPSGDSchedule,
    TrainingRows,
    _make_private,
    dp_step,
    sequence_losses,
)


class PerRowProcessor(LogitsProcessor):
    """The naive grammar processor: a Python loop over rows at every step (the baseline to beat)."""

    def __init__(self, grammar: Grammar, order: torch.Tensor) -> None:
        self.grammar, self.order, self.states = grammar, order, None

    def __call__(self, input_ids, scores):  # type: ignore[no-untyped-def]
        if self.states is None:
            self.states = [self.grammar.start(1) for _ in range(len(input_ids))]
        else:
            for row, st in enumerate(self.states):
                self.grammar.advance(st, input_ids[row, -1:])
        out = scores.clone()
        for row, st in enumerate(self.states):
            out[row] = scores[row].masked_fill(~self.grammar.mask(st, self.order)[0], float("-inf"))
        return out


def _timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_training(rows: TrainingRows, lm, batch: int, steps: int, physical: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    model = lm.model
    model.train()
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(rows), batch, replace=False) for _ in range(steps + 1)]
    it = iter(batches * 10)
    out = []
    with norms_for_opacus(model):
        plain = torch.optim.Adam(model.parameters(), lr=1e-3)

        def plain_step() -> None:
            for chunk in np.array_split(next(it), max(1, batch // physical)):
                (sequence_losses(model, rows.batch(chunk), rows=rows).sum() / batch).backward()
            plain.step()
            plain.zero_grad()

        seconds = _timed(plain_step, steps)
        out.append({"what": "train non-private", "samples_per_s": batch / seconds, "s_per_step": seconds})
        for mode in ("ghost", "hooks"):
            schedule = DPSGDSchedule(sample_rate=0.01, steps=steps, noise_multiplier=1.0, max_grad_norm=1.0,
                                     expected_batch_size=batch, epochs=1.0)
            gsm, optimizer = _make_private(model, torch.optim.Adam(model.parameters(), lr=1e-3), schedule, mode=mode,
                                           noise_generator=torch.Generator().manual_seed(0))
            try:
                seconds = _timed(lambda: dp_step(gsm, optimizer, rows, next(it), mode=mode,  # noqa: B023
                                                 physical_batch_size=physical), steps)
            finally:
                gsm.cleanup()
            out.append({"what": f"train DP-SGD ({mode})", "samples_per_s": batch / seconds, "s_per_step": seconds})
    model.eval()
    base = out[0]["samples_per_s"]
    for row in out:
        row["vs_non_private"] = row["samples_per_s"] / base
    return out


def bench_sampling(lm, grammar: Grammar, codec: RowCodec, rows: int, batch: int, naive_rows: int,  # type: ignore[no-untyped-def]
                   *, rounds: int = 1, extra_batches: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Rows/s of each method at ``batch`` rows per call (best of ``rounds`` interleaved rounds, so a burst
    of load from other processes hits every method alike), plus our loop at ``extra_batches``."""
    order = torch.tensor([*codec.name_tokens, EOS])

    def ours(size: int, fast: bool = True):  # type: ignore[no-untyped-def]
        prompts = torch.ones((size, 1), dtype=torch.long)

        def run() -> None:
            for b in range(max(1, rows // size)):
                sample_tokens(lm, grammar, prompts=prompts, order=order, temperature=1.0, fast=fast,
                              generator=torch.Generator().manual_seed(b))
        return run, max(1, rows // size) * size

    def generate() -> None:
        prompts = torch.ones((batch, 1), dtype=torch.long)
        for b in range(max(1, rows // batch)):
            sample_tokens_generate(lm, grammar, prompts=prompts, order=order, temperature=1.0, seed=b)

    def naive() -> None:
        small = torch.ones((naive_rows, 1), dtype=torch.long)
        lm.model.generate(input_ids=small, attention_mask=torch.ones_like(small), do_sample=True, top_k=0,
                          max_new_tokens=grammar.max_length - 1, pad_token_id=0, eos_token_id=EOS,
                          logits_processor=LogitsProcessorList([PerRowProcessor(grammar, order)]))

    fast_fn, n = ours(batch)
    hf_fn, _ = ours(batch, fast=False)
    methods = [("sample: our loop (Llama decoder)", fast_fn, n, batch),
               ("sample: model.generate + vectorised mask", generate, max(1, rows // batch) * batch, batch),
               ("sample: our loop, HF forward (non-Llama fallback)", hf_fn, n, batch),
               ("sample: model.generate + per-row mask", naive, naive_rows, naive_rows)]
    for size in extra_batches:
        fn, m = ours(size)
        methods.append((f"sample: our loop (Llama decoder), batch {size}", fn, m, size))
    seconds: dict[str, list[float]] = {name: [] for name, *_ in methods}
    for _, fn, *_ in methods:
        fn()  # warm-up
    for r in range(rounds):
        for name, fn, _, _ in methods:
            if r and "per-row" in name:
                continue  # slow and only a reference point: one round
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    out = [{"what": name, "batch": size, "rows_per_s": n / min(seconds[name]), "seconds": min(seconds[name]),
            "rows": n, "rounds_rows_per_s": [n / s for s in seconds[name]]} for name, _, n, size in methods]
    base = out[1]["rows_per_s"]
    for row in out:
        row["vs_generate"] = row["rows_per_s"] / base
    out[0]["vs_per_row_generate"] = out[0]["rows_per_s"] / out[3]["rows_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="rows to sample per method")
    parser.add_argument("--batch", type=int, default=512, help="sampling rows per call")
    parser.add_argument("--train-batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--naive-rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved sampling rounds (best is reported)")
    parser.add_argument("--extra-batches", default="1024,2048", help="our loop at these batch sizes too")
    parser.add_argument("--skip-training", action="store_true", help="sampling only")
    parser.add_argument("--set", action="append", default=[], help="llm generator override KEY=JSON")
    args = parser.parse_args()
    import json

    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    spec = make_spec(ADULT_COLUMNS, source=str(DATA / "adult.csv"), epsilon=4.0, delta=1e-5,
                     generator={"kind": "llm", **overrides}, rows=args.rows, base_dir=Path.cwd())
    gen = spec.generator
    train, _ = split(load_typed(DATA / "adult.csv", spec))
    codec = RowCodec.from_spec(spec, context_length=gen.context_length, names=gen.random_column_order)
    grammar = Grammar(codec, order=list(range(len(codec.columns))))
    lm = build_language_model(gen, codec.symbols, seed=0)
    rows = TrainingRows(codec, grammar, codec.encode_cells(train), lm=lm, order=list(range(len(codec.columns))),
                        order_rng=np.random.default_rng(0) if gen.random_column_order else None)
    with torch_threads() as threads:
        results = [] if args.skip_training else bench_training(rows, lm, args.train_batch, args.steps,
                                                               gen.physical_batch_size)
        extra = tuple(int(b) for b in args.extra_batches.split(",") if b)
        with torch.inference_mode():
            results += bench_sampling(lm, grammar, codec, args.rows, args.batch, args.naive_rows,
                                      rounds=args.rounds, extra_batches=extra)
    info = {"threads": threads, "load_avg": os.getloadavg(), "params": sum(p.numel() for p in lm.model.parameters()),
            "tokens_per_row": codec.max_length, "generator": gen.model_dump(),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    print(table(results, ["what", "batch", "samples_per_s", "vs_non_private", "rows_per_s", "vs_generate",
                          "vs_per_row_generate"]))
    print({k: v for k, v in info.items() if k != "generator"})
    print(f"wrote {write_results('speed', {'results': results, **info})}")


if __name__ == "__main__":
    main()
