"""Peak memory of reading a large CSV source: ``read_source`` against baselines, each in its own process.

Generates a CSV with the demo table's schema (``data/demo.yaml``: dates, integers, floats, categories
with missing values, booleans, a free-text note with commas, so some fields are quoted) in a temporary
directory (deleted afterwards, never committed), then reads it in a fresh child process per method and
reports the child's peak RSS (``ru_maxrss``) and its ratio to the file size. Target: < 3x for
``reader``. Methods:

* ``imports``: the child imports what ``reader`` imports and reads nothing (the fixed overhead);
* ``reader``: ``safesynth.io.read_source`` (pyarrow streaming, strict quoting and UTF-8 checks);
* ``pandas``: ``pandas.read_csv(dtype=str, keep_default_na=False, na_values=[""])``, a common baseline;
* ``old``: the reader before streaming (whole file as bytes, then str, then the csv module), loaded
  from git revision ``--old-rev``; it needs several times the file size in memory.

Usage::

    .venv/bin/python bench/bench_read.py                       # 1 GiB file, reader + imports + pandas
    .venv/bin/python bench/bench_read.py --size-mb 64 --methods imports,reader,pandas,old
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

METHODS = ("imports", "reader", "pandas", "old")
OLD_REV = "e89035d"  # the last commit with the whole-file reader


# ------------------------------------------------------------------------------------------- data


def write_csv(path: Path, size_bytes: int, *, seed: int = 0) -> int:
    """Write a demo-schema CSV of about ``size_bytes`` (pandas quoting, as data/demo.csv); return its rows.

    Four blocks of 50,000 generated rows are written in turn until the size is reached: generating
    every row would take minutes per GiB, and repeated rows read the same as fresh ones.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = [_demo_chunk(rng, 50_000) for _ in range(4)]
    header = blocks[0].columns.tolist()
    texts = [block.to_csv(index=False, header=False, lineterminator="\n").encode() for block in blocks]
    rows = 0
    with path.open("wb") as handle:
        handle.write((",".join(header) + "\n").encode())
        while handle.tell() < size_bytes:
            handle.write(texts[(rows // 50_000) % len(texts)])
            rows += 50_000
    return rows


def _demo_chunk(rng: Any, n: int) -> Any:
    import numpy as np
    import pandas as pd

    def pick(values: tuple[str, ...], missing: float = 0.0) -> Any:
        chosen = pd.Series(np.asarray(values, dtype=object)[rng.integers(0, len(values), n)], dtype="str")
        return chosen.mask(rng.random(n) < missing)

    def numbers(values: Any, missing: float = 0.0) -> Any:
        return pd.Series(values).mask(rng.random(n) < missing)

    # The note has commas in some rows, so some fields are quoted, as in data/demo.csv.
    complaint = pick(("persistent cough for two days", "knee pain after running", "palpitations",
                      "itchy rash on the forearm since last month", "migraines with aura"))
    action = pick(("ordered an ECG.", "advised rest, fluids and paracetamol.", "ordered an X-ray.",
                   "prescribed a topical cream.", "referred to physiotherapy, then review."))
    days = rng.integers(0, 730, n).astype("timedelta64[D]") + np.datetime64("2023-01-01")
    return pd.DataFrame({
        "visit_date": days.astype(str),
        "age": rng.integers(18, 96, n),
        "sex": pick(("female", "male", "other")),
        "region": pick(("north", "south", "east", "west", "central")),
        "department": pick(("general_practice", "cardiology", "orthopedics", "dermatology", "neurology")),
        "visit_type": pick(("routine", "urgent", "follow_up", "telehealth")),
        "insurance": pick(("public", "private", "self_pay"), missing=0.05),
        "smoker": pick(("true", "false"), missing=0.03),
        "bmi": numbers(np.round(rng.normal(27, 5, n).clip(15, 55), 1), missing=0.04),
        "wait_minutes": rng.integers(0, 241, n),
        "bill_amount": np.round(rng.gamma(2.0, 60.0, n).clip(0, 5000), 2),
        "satisfaction": numbers(rng.integers(1, 6, n), missing=0.1).astype("Int64"),
        "follow_up": pick(("true", "false")),
        "note": "Reports " + complaint + "; " + action,
    })


def demo_spec(source: Path, workdir: Path) -> Any:
    import yaml

    from safesynth.spec import parse_spec

    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data.update(source=str(source), publish={"target": str(workdir / "releases")})
    return parse_spec(data, base_dir=workdir)


# ------------------------------------------------------------------------------------------ child


def child(method: str, source: Path, workdir: Path, old_module: str | None) -> dict[str, Any]:
    """Runs in the child process: read ``source`` with ``method``; report rows, seconds, peak RSS."""
    import pandas as pd

    from safesynth import io as reader_io

    spec = demo_spec(source, workdir)
    start = time.perf_counter()
    if method == "imports":
        rows = 0
    elif method == "reader":
        rows = len(reader_io.read_source(spec))
    elif method == "pandas":
        rows = len(pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""]))
    else:
        module_spec = importlib.util.spec_from_file_location("old_io", old_module or "")
        old = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules["old_io"] = old  # dataclasses look the module up
        module_spec.loader.exec_module(old)  # type: ignore[union-attr]
        rows = len(old.read_source(spec))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"method": method, "rows": rows, "seconds": round(seconds, 2), "peak_rss_bytes": peak_kib * 1024}


def run_child(method: str, source: Path, workdir: Path, old_module: Path | None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", method, "--source", str(source),
               "--workdir", str(workdir)] + (["--old-module", str(old_module)] if old_module else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def old_reader(workdir: Path, rev: str) -> Path | None:
    """The pre-streaming io.py from git, as a file; None if git or the revision is not there."""
    try:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:safesynth/io.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = workdir / "old_io.py"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024.0, help="CSV size in MiB (default 1024)")
    parser.add_argument("--methods", default="imports,reader,pandas", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--old-rev", default=OLD_REV, help="git revision of the old reader (method old)")
    parser.add_argument("--tmp", default=None, help="directory for the generated CSV (default: system temp)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--old-module", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.source, args.workdir, args.old_module)))
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {sorted(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="safesynth-bench-read-", dir=args.tmp))
    try:
        report(run(methods, workdir, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(methods: list[str], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    source = workdir / "demo_big.csv"
    start = time.perf_counter()
    rows = write_csv(source, int(args.size_mb * 2**20))
    size = source.stat().st_size
    print(f"wrote {size / 2**20:.0f} MiB, {rows} rows in {time.perf_counter() - start:.0f} s", flush=True)
    old_module = old_reader(workdir, args.old_rev) if "old" in methods else None
    results = []
    for method in methods:
        if method == "old" and old_module is None:
            results.append({"method": method, "error": f"git revision {args.old_rev} not available"})
            continue
        result = run_child(method, source, workdir, old_module)
        if "peak_rss_bytes" in result:
            result["ratio_to_file"] = round(result["peak_rss_bytes"] / size, 2)
        results.append(result)
        print(json.dumps(result), flush=True)
    return {"file_bytes": size, "rows": rows, "results": results, "machine": platform.platform(),
            "cpus": os.cpu_count(), "command": " ".join(sys.argv)}


def report(record: dict[str, Any]) -> None:
    size = record["file_bytes"]
    print(f"\nfile: {size / 2**20:.0f} MiB, {record['rows']:,} rows")
    print("| method | rows | seconds | peak RSS | peak / file size |")
    print("|---|---|---|---|---|")
    for r in record["results"]:
        if "error" in r:
            print(f"| {r['method']} | error: {r['error']} | | | |")
            continue
        print(f"| {r['method']} | {r['rows']:,} | {r['seconds']} | {r['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"| {r['ratio_to_file']} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"read_{int(size / 2**20)}mb.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
