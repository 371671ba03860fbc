"""Publishing to a real S3-compatible server (moto_server in a subprocess, on loopback; tests/s3.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from safesynth.errors import PublishError
from safesynth.publish import find_published, publish_release
from tests.s3 import fsspec_options

pytestmark = pytest.mark.slow


def options(url: str) -> dict:
    return fsspec_options(url)


def make_files(tmp_path):
    files = []
    for i in range(2):
        p = tmp_path / f"part-{i:05d}.parquet"
        p.write_bytes(b"rows%d" % i)
        files.append(p)
    return files


def test_s3_publish_writes_parts_then_manifest(tmp_path, s3_endpoint):
    files = make_files(tmp_path)
    manifest = {"release_id": "r1", "files": [{"path": p.name} for p in files]}
    out = publish_release(files, manifest, target="s3://releases/synth", dataset="ds", release_id="r1",
                          storage_options=options(s3_endpoint))
    assert out.location == "s3://releases/synth/ds/r1"
    published = find_published("s3://releases/synth", "ds", "r1", options(s3_endpoint))
    import s3fs

    fs = s3fs.S3FileSystem(**options(s3_endpoint))
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls("releases/synth/ds/r1"))
    assert names == sorted(["manifest.json", *(f["path"] for f in published["files"])])
    assert all(f["path"].startswith("part-0000") for f in published["files"])
    again = publish_release(files, manifest, target="s3://releases/synth", dataset="ds", release_id="r1",
                            storage_options=options(s3_endpoint))
    assert again.already_published


def test_two_publishers_racing_on_one_release_id_exactly_one_wins(tmp_path, s3_endpoint):
    files = make_files(tmp_path)
    manifest = lambda i: {"writer": i, "files": [{"path": p.name} for p in files]}  # noqa: E731

    def attempt(i: int):
        try:
            publish_release(files, manifest(i), target="s3://releases/race", dataset="ds",
                            release_id="r1", storage_options=options(s3_endpoint))
            return "won"
        except PublishError:
            return "lost"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, range(4)))
    assert results.count("won") == 1, results
    winner = find_published("s3://releases/race", "ds", "r1", options(s3_endpoint))
    assert results[winner["writer"]] == "won"
    import s3fs

    fs = s3fs.S3FileSystem(**options(s3_endpoint))
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls("releases/race/ds/r1"))
    # Only the winner's parts remain: the losers removed theirs.
    assert names == sorted(["manifest.json", *(f["path"] for f in winner["files"])])
