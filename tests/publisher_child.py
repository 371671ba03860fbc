"""A publisher in its own process, for the crash and race tests: ``python -m tests.publisher_child JOB.json``.

The job names the target, the parts, the manifest and the release id; optionally ``go`` (a file to wait for,
so that two children start publishing together) and ``pause`` with ``marker``: the child touches ``marker``
once its data files are written, just before its commit, and sleeps there until it is killed.

Prints one line and exits 0 (published or already published), 3 (PublishError: it lost cleanly) or 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _pause_before_commit(fmt: str, marker: Path) -> None:
    def hang() -> None:
        marker.touch()
        time.sleep(600)

    if fmt == "files":  # the parts are uploaded; the manifest (the commit) is next
        import safesynth.publish as files

        def put_manifest(*args: Any, **kwargs: Any) -> None:
            hang()

        files._put_manifest = put_manifest  # type: ignore[assignment]
    elif fmt == "delta":  # the rows are streamed into data files; the commit follows the end of the stream
        import pyarrow as pa

        import safesynth.publish_delta as delta

        original = delta._batches

        def batches(files: list[Path], release_id: str) -> pa.RecordBatchReader:
            reader = original(files, release_id)

            def gen() -> Any:
                yield from reader
                hang()

            return pa.RecordBatchReader.from_batches(reader.schema, gen())

        delta._batches = batches  # type: ignore[assignment]
    else:  # iceberg: the data files and manifests are written; the catalog swap is the commit
        from pyiceberg.table import Transaction

        def commit_transaction(self: Any) -> Any:
            hang()

        Transaction.commit_transaction = commit_transaction  # type: ignore[method-assign]


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    from safesynth.errors import PublishError
    from safesynth.publishers import PublishTarget, create_publisher

    target = PublishTarget(**job["target"])
    publisher = create_publisher(target)
    if job.get("pause"):
        _pause_before_commit(target.format, Path(job["marker"]))
    if job.get("go"):
        go = Path(job["go"])
        while not go.exists():
            time.sleep(0.01)
    try:
        out = publisher.publish([Path(p) for p in job["parts"]], job["manifest"], dataset=job["dataset"],
                                release_id=job["release_id"])
    except PublishError as exc:
        print(f"lost: {exc}", flush=True)
        return 3
    print("already" if out.already_published else "won", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
