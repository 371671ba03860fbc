"""Every publisher (files, delta, iceberg) on local paths: one commit per release, immutable, readable."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safesynth.errors import PublishError, SpecError
from safesynth.publishers import (
    PROPERTY_PREFIX,
    PUBLISHERS,
    PublishTarget,
    create_publisher,
    known_formats,
    manifest_from_properties,
    privacy_properties,
)

FORMATS = ("files", "delta", "iceberg")


def target_for(fmt: str, tmp_path) -> PublishTarget:
    if fmt == "iceberg":
        return PublishTarget(format=fmt, target=str(tmp_path / "warehouse"), catalog=f"sqlite:///{tmp_path}/cat.db",
                             table="releases.synth")
    return PublishTarget(format=fmt, target=str(tmp_path / ("table" if fmt == "delta" else "target")))


def make_part(tmp_path, name: str, ages: list[int]):
    out = tmp_path / name
    out.mkdir()
    path = out / "part-00000.parquet"
    pq.write_table(pa.table({"age": pa.array(ages, pa.int64()), "city": [f"c{a}" for a in ages]}), path)
    return [path]


def manifest(release_id: str, *, day: int, epsilon: float = 1.0, **extra):
    return {"format": "safesynth.release/1", "dataset": "ds", "release_id": release_id,
            "created_at": f"2026-12-0{day}T00:00:00+00:00", "spec_digest": "ab" * 32,
            "privacy": {"epsilon": epsilon, "delta": 1e-6, "accountant": "rdp"},
            "files": [{"path": "part-00000.parquet"}], **extra}


def read_release(fmt: str, tmp_path, release_id: str) -> list[int]:
    """What a consumer reads of one release, with the store's own library."""
    if fmt == "files":  # the files the manifest lists, nothing else
        where = tmp_path / "target" / "ds" / release_id
        listed = json.loads((where / "manifest.json").read_text())["files"]
        table = pa.concat_tables(pq.read_table(where / f["path"]) for f in listed)
        return sorted(table.column("age").to_pylist())
    if fmt == "delta":
        from deltalake import DeltaTable

        table = DeltaTable(str(tmp_path / "table")).to_pyarrow_table(filters=[("release_id", "=", release_id)])
        return sorted(table.column("age").to_pylist())
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import EqualTo

    catalog = SqlCatalog("safesynth", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=(tmp_path / "warehouse").as_uri())
    table = catalog.load_table("releases.synth").scan(row_filter=EqualTo("release_id", release_id)).to_arrow()
    return sorted(table.column("age").to_pylist())


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_releases_are_both_readable_and_latest_moves(fmt, tmp_path):
    publisher = create_publisher(target_for(fmt, tmp_path))
    publisher.check()
    assert publisher.releases("ds") == [] and publisher.latest("ds") is None
    first = publisher.publish(make_part(tmp_path, "a", [1, 2]), manifest("r1", day=1), dataset="ds", release_id="r1")
    assert not first.already_published
    assert publisher.latest("ds").release_id == "r1"
    publisher.publish(make_part(tmp_path, "b", [3, 4, 5]), manifest("r2", day=2, epsilon=0.5), dataset="ds",
                      release_id="r2")
    listed = publisher.releases("ds")
    assert [(r.release_id, r.epsilon, r.delta) for r in listed] == [("r1", 1.0, 1e-6), ("r2", 0.5, 1e-6)]
    assert publisher.latest("ds").release_id == "r2"
    assert read_release(fmt, tmp_path, "r1") == [1, 2]
    assert read_release(fmt, tmp_path, "r2") == [3, 4, 5]
    assert publisher.find("ds", "r1") == manifest("r1", day=1)
    assert publisher.find("ds", "nope") is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_republishing_is_a_no_op_and_a_different_manifest_is_refused(fmt, tmp_path):
    publisher = create_publisher(target_for(fmt, tmp_path))
    files = make_part(tmp_path, "a", [1, 2])
    publisher.publish(files, manifest("r1", day=1), dataset="ds", release_id="r1")
    again = publisher.publish(files, manifest("r1", day=1), dataset="ds", release_id="r1")
    assert again.already_published
    with pytest.raises(PublishError, match="already published"):
        publisher.publish(make_part(tmp_path, "b", [9]), manifest("r1", day=1, epsilon=2.0), dataset="ds",
                          release_id="r1")
    assert [r.release_id for r in publisher.releases("ds")] == ["r1"]
    assert read_release(fmt, tmp_path, "r1") == [1, 2]


def table_properties(fmt: str, tmp_path) -> list[dict]:
    """Every commit's (delta) or snapshot's (iceberg) properties."""
    if fmt == "delta":
        from deltalake import DeltaTable

        return DeltaTable(str(tmp_path / "table")).history()
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("safesynth", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=(tmp_path / "warehouse").as_uri())
    return [dict(s.summary.additional_properties) for s in catalog.load_table("releases.synth").snapshots()]


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_commit_properties_hold_the_published_privacy_metadata_only(fmt, tmp_path):
    publisher = create_publisher(target_for(fmt, tmp_path))
    published = manifest("r1", day=1)
    publisher.publish(make_part(tmp_path, "a", [1, 2]), published, dataset="ds", release_id="r1")
    [props] = [p for p in table_properties(fmt, tmp_path) if PROPERTY_PREFIX + "release_id" in p]
    ours = {k: v for k, v in props.items() if k.startswith(PROPERTY_PREFIX)}
    assert ours == privacy_properties(published)
    assert {k.removeprefix(PROPERTY_PREFIX) for k in ours} == {
        "format", "dataset", "release_id", "created_at", "spec_digest", "epsilon", "delta", "accountant",
        "manifest_sha256", "manifest"}
    assert float(ours["safesynth.epsilon"]) == 1.0 and ours["safesynth.dataset"] == "ds"
    assert manifest_from_properties(ours) == published  # exactly what the files manifest publishes
    assert not any("row" in k for k in ours)  # no row count of ours; values are the manifest's


def test_files_latest_pointer_moves_after_the_manifest_and_never_back(tmp_path):
    publisher = create_publisher(target_for("files", tmp_path))
    publisher.publish(make_part(tmp_path, "a", [1]), manifest("r2", day=2), dataset="ds", release_id="r2")
    pointer = json.loads((tmp_path / "target" / "ds" / "LATEST").read_text())
    assert pointer == {"release_id": "r2", "manifest": "r2/manifest.json", "created_at": manifest("r2", day=2)[
        "created_at"]}
    # An older release published late (a slow run) does not take the pointer back.
    publisher.publish(make_part(tmp_path, "b", [2]), manifest("r1", day=1), dataset="ds", release_id="r1")
    assert publisher.latest("ds").release_id == "r2"
    assert [r.release_id for r in publisher.releases("ds")] == ["r1", "r2"]


def test_files_latest_is_repaired_by_republishing_after_a_crash_before_the_pointer(tmp_path):
    publisher = create_publisher(target_for("files", tmp_path))
    files = make_part(tmp_path, "a", [1])
    publisher.publish(files, manifest("r1", day=1), dataset="ds", release_id="r1")
    publisher.publish(make_part(tmp_path, "b", [2]), manifest("r2", day=2), dataset="ds", release_id="r2")
    (tmp_path / "target" / "ds" / "LATEST").write_text(json.dumps({"release_id": "r1"}))  # as if r2 died here
    assert publisher.latest("ds").release_id == "r1"
    publisher.publish(make_part(tmp_path, "c", [2]), manifest("r2", day=2), dataset="ds", release_id="r2")
    assert publisher.latest("ds").release_id == "r2"


def test_a_staging_directory_is_never_listed(tmp_path):
    publisher = create_publisher(target_for("files", tmp_path))
    staging = tmp_path / "target" / "ds" / ".staging-x-r9"
    staging.mkdir(parents=True)
    (staging / "manifest.json").write_text(json.dumps(manifest("r9", day=9)))
    (tmp_path / "target" / "ds" / "r8").mkdir()  # parts without a manifest: a partial release
    assert publisher.releases("ds") == [] and publisher.latest("ds") is None


def test_registry_knows_the_built_in_formats_and_refuses_unknown_ones(tmp_path):
    assert set(FORMATS) <= set(known_formats())
    with pytest.raises(SpecError, match="must be one of"):
        create_publisher(PublishTarget(format="nope", target=str(tmp_path)))
    create_publisher(target_for("delta", tmp_path))
    assert PUBLISHERS["delta"].format == "delta"


def test_delta_check_refuses_a_directory_that_is_not_a_table(tmp_path):
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "other.txt").write_text("x")
    with pytest.raises(SpecError, match="not a Delta table"):
        create_publisher(target_for("delta", tmp_path)).check()


def test_iceberg_check_refuses_a_catalog_that_is_not_a_url(tmp_path):
    bad = PublishTarget(format="iceberg", target=str(tmp_path), catalog="sqlite:///missing/dir/cat.db", table="a.b")
    with pytest.raises(SpecError, match="does not exist"):
        create_publisher(bad).check()
    with pytest.raises(SpecError, match="not a SQLAlchemy URL"):
        create_publisher(PublishTarget(format="iceberg", target=str(tmp_path), catalog="::", table="a.b")).check()


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_preflight_refuses_declared_types_an_existing_table_cannot_take(fmt, tmp_path):
    publisher = create_publisher(target_for(fmt, tmp_path))
    same = pa.schema([("age", pa.int64()), ("city", pa.string()), ("new", pa.bool_())])
    publisher.check_schema(same)  # no table yet
    publisher.publish(make_part(tmp_path, "a", [1]), manifest("r1", day=1), dataset="ds", release_id="r1")
    publisher.check_schema(same)  # same types, and a new column: fine
    with pytest.raises(SpecError, match=r"age \(int64 there, double here\); publish into a new table"):
        publisher.check_schema(pa.schema([("age", pa.float64()), ("city", pa.string())]))


def test_preflight_checks_the_publisher_of_the_spec(tmp_path):
    import yaml

    from safesynth.preflight import check_target
    from safesynth.spec import load_spec
    from tests.unit.test_spec import ISSUE_EXAMPLE

    data = yaml.safe_load(ISSUE_EXAMPLE)
    data["publish"] = {"format": "iceberg", "target": "wh", "catalog": "sqlite:///no/such/dir/c.db", "table": "a.b"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="does not exist"):
        check_target(load_spec(tmp_path / "spec.yaml"))
    data["publish"] = {"format": "delta", "target": "table"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    check_target(load_spec(tmp_path / "spec.yaml"))
    assert not (tmp_path / "table").exists()  # checking writes nothing


def race_for_latest(publisher, tmp_path, monkeypatch) -> str:
    """An older release's publisher reads ``LATEST``, then stalls while a newer release publishes.

    Without one read-compare-write step the stalled publisher writes last and takes the pointer back to
    the older release; with it, the pointer ends at the newer one. Returns where the pointer ends.
    """
    import threading
    import time

    from safesynth import publish

    real, reading = publish._stays, threading.Event()

    def stalling(current, release_id, created):
        if release_id == "r1":
            reading.set()
            time.sleep(1.5)  # the newer release publishes meanwhile (or waits for this step to finish)
        return real(current, release_id, created)

    monkeypatch.setattr(publish, "_stays", stalling)
    older = threading.Thread(target=publisher.publish, args=(make_part(tmp_path, "a", [1]), manifest("r1", day=1)),
                             kwargs={"dataset": "ds", "release_id": "r1"})
    older.start()
    assert reading.wait(30)
    publisher.publish(make_part(tmp_path, "b", [2]), manifest("r2", day=2), dataset="ds", release_id="r2")
    older.join(60)
    return publisher.latest("ds").release_id


def test_files_latest_never_moves_back_when_publishers_race(tmp_path, monkeypatch):
    publisher = create_publisher(target_for("files", tmp_path))
    assert race_for_latest(publisher, tmp_path, monkeypatch) == "r2"
    assert [r.release_id for r in publisher.releases("ds")] == ["r1", "r2"]


def test_a_lost_conditional_put_is_recognised_by_its_s3_error_code_not_by_digits_in_a_message():
    """s3fs wraps botocore's ClientError in an OSError (the ClientError is the cause) or a FileExistsError."""
    from botocore.exceptions import ClientError

    from safesynth.publish import _precondition_failed

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")

    def wrapped(cause: Exception) -> OSError:
        try:
            try:
                raise cause
            except ClientError as exc:
                raise OSError("translated by s3fs") from exc
        except OSError as outer:
            return outer

    assert _precondition_failed(wrapped(client_error("PreconditionFailed", 412)))
    assert _precondition_failed(client_error("ConditionalRequestConflict", 409))
    assert _precondition_failed(FileExistsError("s3://bucket/key"))
    assert not _precondition_failed(OSError("wrote 412 bytes, then the disk filled"))
    assert not _precondition_failed(wrapped(client_error("AccessDenied", 403)))
    assert not _precondition_failed(client_error("OperationAborted", 409))
