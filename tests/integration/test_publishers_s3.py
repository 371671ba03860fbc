"""Every publisher against a real S3 endpoint (moto_server in its own process): releases, crashes, races.

A publisher killed after writing its data but before its commit leaves the previous release as the latest
and nothing partial listed; two processes publishing one release id: exactly one wins, the other fails
cleanly (PublishError, exit 3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from safesynth.publishers import PublishTarget, create_publisher
from tests.s3 import delta_options, fsspec_options, iceberg_options
from tests.unit.test_publishers import make_part, manifest, race_for_latest

pytestmark = pytest.mark.slow

FORMATS = ("files", "delta", "iceberg")
REPO = Path(__file__).resolve().parents[2]


def s3_target(fmt: str, url: str, tmp_path: Path) -> PublishTarget:
    where = f"s3://releases/{fmt}-{uuid.uuid4().hex[:8]}"
    if fmt == "files":
        return PublishTarget(format=fmt, target=where, storage_options=fsspec_options(url))
    if fmt == "delta":
        return PublishTarget(format=fmt, target=where, storage_options=delta_options(url))
    return PublishTarget(format=fmt, target=where, catalog=f"sqlite:///{tmp_path}/catalog.db", table="rel.synth",
                         storage_options=iceberg_options(url))


def read_release(target: PublishTarget, release_id: str) -> list[int]:
    """What a consumer reads, with pandas (files), deltalake or pyiceberg."""
    if target.format == "files":
        base = f"{target.target}/ds/{release_id}"
        import fsspec

        fs, root = fsspec.core.url_to_fs(base, **target.storage_options)
        listed = json.loads(fs.cat_file(f"{root}/manifest.json"))["files"]
        frames = [pd.read_parquet(f"{base}/{f['path']}", storage_options=dict(target.storage_options))
                  for f in listed]
        return sorted(pd.concat(frames)["age"].tolist())
    if target.format == "delta":
        from deltalake import DeltaTable

        table = DeltaTable(target.target, storage_options=dict(target.storage_options))
        return sorted(table.to_pandas(filters=[("release_id", "=", release_id)])["age"].tolist())
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import EqualTo

    catalog = SqlCatalog("safesynth", uri=target.catalog, warehouse=target.target, **target.storage_options)
    scan = catalog.load_table(target.table).scan(row_filter=EqualTo("release_id", release_id))
    return sorted(scan.to_pandas()["age"].tolist())


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_releases_on_s3_are_both_readable_and_latest_moves(fmt, s3_endpoint, tmp_path):
    target = s3_target(fmt, s3_endpoint, tmp_path)
    publisher = create_publisher(target)
    publisher.publish(make_part(tmp_path, "a", [1, 2]), manifest("r1", day=1), dataset="ds", release_id="r1")
    assert publisher.latest("ds").release_id == "r1"
    publisher.publish(make_part(tmp_path, "b", [3]), manifest("r2", day=2), dataset="ds", release_id="r2")
    assert [r.release_id for r in publisher.releases("ds")] == ["r1", "r2"]
    assert publisher.latest("ds").release_id == "r2"
    assert read_release(target, "r1") == [1, 2] and read_release(target, "r2") == [3]
    again = publisher.publish(make_part(tmp_path, "c", [3]), manifest("r2", day=2), dataset="ds", release_id="r2")
    assert again.already_published


def test_files_latest_on_s3_never_moves_back_when_publishers_race(s3_endpoint, tmp_path, monkeypatch):
    publisher = create_publisher(s3_target("files", s3_endpoint, tmp_path))  # a conditional PUT (If-Match)
    assert race_for_latest(publisher, tmp_path, monkeypatch) == "r2"


def spawn(tmp_path: Path, target: PublishTarget, parts: list[Path], release_id: str, manifest_: dict,
          **extra) -> subprocess.Popen:
    job = tmp_path / f"job-{uuid.uuid4().hex[:6]}.json"
    fields = {"format": target.format, "target": target.target, "storage_options": dict(target.storage_options),
              "catalog": target.catalog, "table": target.table}
    job.write_text(json.dumps({"target": fields, "parts": [str(p) for p in parts], "manifest": manifest_,
                               "dataset": "ds", "release_id": release_id, **extra}))
    return subprocess.Popen([sys.executable, "-m", "tests.publisher_child", str(job)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the publisher exited early: {proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the publisher never reached its commit")
        time.sleep(0.05)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_publisher_killed_before_its_commit_leaves_the_previous_release_latest(fmt, s3_endpoint, tmp_path):
    target = s3_target(fmt, s3_endpoint, tmp_path)
    publisher = create_publisher(target)
    publisher.publish(make_part(tmp_path, "a", [1]), manifest("r1", day=1), dataset="ds", release_id="r1")
    parts = make_part(tmp_path, "b", [2, 3])
    marker = tmp_path / "at-commit"
    proc = spawn(tmp_path, target, parts, "r2", manifest("r2", day=2), pause=True, marker=str(marker))
    wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert publisher.latest("ds").release_id == "r1"
    assert [r.release_id for r in publisher.releases("ds")] == ["r1"]
    assert publisher.find("ds", "r2") is None
    assert read_release(target, "r1") == [1]
    # The next attempt publishes the release, and only then does latest move.
    publisher.publish(parts, manifest("r2", day=2), dataset="ds", release_id="r2")
    assert publisher.latest("ds").release_id == "r2" and read_release(target, "r2") == [2, 3]
    if fmt == "files":  # the dead attempt's parts are gone: the release holds what its manifest lists
        import fsspec

        fs, root = fsspec.core.url_to_fs(f"{target.target}/ds/r2", **target.storage_options)
        names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(root, refresh=True))
        assert names == sorted(["manifest.json", *publisher.latest("ds").files])


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_processes_publishing_one_release_id_exactly_one_wins(fmt, s3_endpoint, tmp_path):
    target = s3_target(fmt, s3_endpoint, tmp_path)
    go = tmp_path / "go"
    procs = [spawn(tmp_path, target, make_part(tmp_path, f"w{i}", [10 + i]), "r1",
                   manifest("r1", day=1, writer=i), go=str(go)) for i in range(2)]
    time.sleep(0.5 if fmt == "files" else 1.5)  # both import and wait at the gate, then start together
    go.touch()
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        outputs.append((proc.returncode, out.strip()))
    codes = sorted(code for code, _ in outputs)
    assert codes == [0, 3], outputs
    loser = next(out for code, out in outputs if code == 3)
    assert loser.startswith("lost:") and "Traceback" not in loser
    winner = next(i for i, (code, _) in enumerate(outputs) if code == 0)
    publisher = create_publisher(target)
    [published] = publisher.releases("ds")
    assert published.manifest["writer"] == winner
    assert read_release(target, "r1") == [10 + winner]


def test_delta_commits_on_s3_are_put_if_absent(s3_endpoint):
    """The primitive the delta publisher's race safety rests on: on S3 (no lock, no unsafe rename), a second
    commit at a version another writer took fails instead of overwriting its log entry."""
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import CommitFailedError

    uri, options = f"s3://releases/put-if-absent-{uuid.uuid4().hex[:8]}", delta_options(s3_endpoint)
    rows = pa.table({"x": [1]})
    write_deltalake(uri, rows, storage_options=options)
    first, second = (DeltaTable(uri, storage_options=options) for _ in range(2))
    once = CommitProperties(max_commit_retries=0)
    write_deltalake(first, rows, mode="append", storage_options=options, commit_properties=once)
    with pytest.raises(CommitFailedError):
        write_deltalake(second, rows, mode="append", storage_options=options, commit_properties=once)
    assert DeltaTable(uri, storage_options=options).version() == 1
