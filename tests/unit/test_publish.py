"""Atomic publishing: manifest last, nothing partial, immutable release ids."""

from __future__ import annotations

import json

import pytest

from safesynth.errors import PublishError
from safesynth.publish import find_published, publish_release


def make_files(tmp_path, n=2):
    src = tmp_path / "out"
    src.mkdir()
    files = []
    for i in range(n):
        p = src / f"part-{i:05d}.parquet"
        p.write_bytes(b"data%d" % i)
        files.append(p)
    return files


def manifest_for(files):
    return {"release_id": "r1", "files": [{"path": p.name} for p in files]}


def test_local_publish_writes_files_and_manifest_in_one_step(tmp_path):
    files = make_files(tmp_path)
    target = tmp_path / "target"
    published = publish_release(files, manifest_for(files), target=str(target), dataset="ds", release_id="r1")
    final = target / "ds" / "r1"
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "part-00000.parquet", "part-00001.parquet"]
    assert json.loads((final / "manifest.json").read_text())["release_id"] == "r1"
    assert published.location.endswith("ds/r1")
    assert not list((target / "ds").glob(".staging-*"))


def test_publishing_the_same_release_id_twice_neither_duplicates_nor_corrupts(tmp_path):
    files = make_files(tmp_path)
    target = str(tmp_path / "target")
    manifest = manifest_for(files)
    publish_release(files, manifest, target=target, dataset="ds", release_id="r1")
    again = publish_release(files, manifest, target=target, dataset="ds", release_id="r1")
    assert again.already_published
    files[0].write_bytes(b"different")
    with pytest.raises(PublishError, match="already published"):
        publish_release(files, {**manifest, "other": 1}, target=target, dataset="ds", release_id="r1")
    assert (tmp_path / "target" / "ds" / "r1" / "part-00000.parquet").read_bytes() == b"data0"
    assert find_published(target, "ds", "r1") == manifest


def test_failed_local_publish_leaves_nothing_under_the_target(tmp_path):
    files = make_files(tmp_path)
    files.append(tmp_path / "out" / "missing.parquet")
    target = tmp_path / "target"
    with pytest.raises(PublishError, match="cannot publish"):
        publish_release(files, manifest_for(files), target=str(target), dataset="ds", release_id="r1")
    assert not (target / "ds" / "r1").exists()
    assert not list((target / "ds").glob(".staging-*"))


def test_fsspec_target_gets_manifest_last(tmp_path):
    import fsspec

    files = make_files(tmp_path)
    publish_release(files, manifest_for(files), target="memory://bucket/releases", dataset="ds", release_id="r1")
    fs = fsspec.filesystem("memory")
    assert fs.exists("/bucket/releases/ds/r1/manifest.json")
    assert find_published("memory://bucket/releases", "ds", "r1")["release_id"] == "r1"
    with pytest.raises(PublishError, match="already published"):
        publish_release(files, {"x": 1}, target="memory://bucket/releases", dataset="ds", release_id="r1")
