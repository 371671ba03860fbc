"""Seconds per DP-SGD step and per sampled row of the llm generator fine-tuning ``smollm2-135m`` (LoRA).

A subset of the reviews table (``--rows`` rows, ``review_text`` cut to ``--max-length`` characters, plus age,
rating, recommended and department) goes through ``LLMBackend.fit`` (SmolLM2's own BPE tokenizer for the
text, LoRA adapters and the new tokens' rows trained with DP-SGD), then ``--sample-rows`` rows are sampled.
Reports the training seconds per step (from the DP-SGD loop's own clock, so loading the GGUF file is not in
it), sampling seconds per row, the torch threads and the load average before and after (the machine may
be shared: read the load average with the timings).

    .venv/bin/python bench/bench_pretrained.py --rows 1000 --epochs 0.25 --sample-rows 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REVIEWS_COLUMNS, load_typed, make_spec, table, write_results  # noqa: E402

import safesynth.generator.llm.backend as llm_backend  # noqa: E402
from safesynth.generator import get_backend  # noqa: E402
from safesynth.privacy.accountant import ReleaseAccount  # noqa: E402
from safesynth.privacy.noise import OpenDPNoise  # noqa: E402
from safesynth.privacy.planner import plan_budget  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--physical", type=int, default=16)
    parser.add_argument("--mode", choices=["hooks", "ghost"], default="hooks")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--sample-rows", type=int, default=64)
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--epsilon", type=float, default=4.0)
    parser.add_argument("--learning-rate", type=float, default=1e-2)  # the spec default
    args = parser.parse_args()

    columns = {**REVIEWS_COLUMNS, "review_text": {**REVIEWS_COLUMNS["review_text"], "max_length": args.max_length}}
    path = DATA / "womens_clothing_ecommerce_reviews.csv"
    gen: dict[str, Any] = {"kind": "llm", "model": "smollm2-135m", "lora": True, "epochs": args.epochs,
                           "batch_size": args.batch_size, "physical_batch_size": args.physical,
                           "grad_sample_mode": args.mode, "context_length": args.context_length,
                           "learning_rate": args.learning_rate, "device": "cpu"}
    with tempfile.TemporaryDirectory() as work:
        spec = make_spec(columns, source=str(path), epsilon=args.epsilon, delta=1e-5, generator=gen,
                         rows=args.sample_rows, base_dir=Path(work))
        spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"batch_size": args.sample_batch})})
        train = load_typed(path, spec).sample(n=args.rows, random_state=0).reset_index(drop=True)
        stats: list[Any] = []
        original = llm_backend.train_dp_sgd

        def timed(*a: Any, **k: Any) -> Any:
            stats.append(original(*a, **k))
            return stats[-1]

        llm_backend.train_dp_sgd = timed
        load_before = os.getloadavg()
        start = time.perf_counter()
        account = ReleaseAccount(delta=spec.privacy.delta)
        fitted = get_backend("llm").fit(train, spec=spec, plan=plan_budget(spec), account=account,
                                        noise=OpenDPNoise(), workdir=Path(work))
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        synthetic = fitted.sample(args.sample_rows, seed=0)
        sample_s = time.perf_counter() - start
        load_after = os.getloadavg()
    step_s = stats[0].seconds / stats[0].steps
    texts = synthetic["review_text"].dropna()
    tokens = fitted.codec.columns[fitted.codec.index("review_text")].encode(train["review_text"])
    result = {"rows": args.rows, "max_length": args.max_length, "batch_size": args.batch_size,
              "physical": args.physical, "mode": args.mode, "steps": stats[0].steps, "train_s": stats[0].seconds,
              "s_per_step": step_s, "fit_s": fit_s, "sample_rows": args.sample_rows, "sample_s": sample_s,
              "s_per_row": sample_s / args.sample_rows, "epsilon": account.epsilon,
              "threads": os.environ.get("SAFESYNTH_TORCH_THREADS", "all"),
              "load_avg_before": load_before[0], "load_avg_after": load_after[0],
              "mean_text_tokens": sum(len(t) - 1 for t in tokens) / len(tokens),
              "mean_text_chars_generated": float(texts.str.len().mean()) if len(texts) else 0.0}
    print(table([result], list(result)))
    for text in texts.head(3):
        print(repr(text[:120]))
    print(f"wrote {write_results('pretrained', result)}")


if __name__ == "__main__":
    main()
