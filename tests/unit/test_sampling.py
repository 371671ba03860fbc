"""The pieces of distributed sampling: the shard plan, part checks, streamed output, the cluster plan."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import pandas as pd
import pyarrow.parquet as pq
import pytest

from safesynth.errors import ClusterError, SamplingError, SpecError
from safesynth.output import read_release_metadata, write_parquet
from safesynth.sampling import SampledRows, shard_plan
from safesynth.sampling.cluster import plan_cluster, preflight_cluster, prewarm_workers, scheduler_address
from safesynth.sampling.parts import Part, encode_part, verify_parts, write_bytes
from tests.helpers import make_spec, mixed_frame


def spec_with(tmp_path, **sampling):
    return make_spec(tmp_path, sampling={"rows": 1000, "seed": 0, **sampling})


def test_the_shard_plan_covers_every_row_once_with_fixed_seeds(tmp_path):
    spec = spec_with(tmp_path, rows=1050, shard_rows=100)
    plan = shard_plan(spec)
    assert [s.index for s in plan] == list(range(11)) and sum(s.rows for s in plan) == 1050
    assert plan[-1].rows == 50 and len({s.seed for s in plan}) == 11
    assert shard_plan(spec) == plan  # from the spec alone: a retried shard is identical
    assert shard_plan(spec_with(tmp_path, rows=1050, shard_rows=100, seed=1)) != plan


def written_parts(tmp_path, spec, sizes):
    parts = []
    for i, n in enumerate(sizes):
        data = encode_part(mixed_frame(n, seed=i), spec)
        uri = str(tmp_path / f"part-{i:05d}.parquet")
        write_bytes(uri, data)
        parts.append(Part(shard=i, uri=uri, rows=n, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    return parts


def test_verify_parts_accepts_the_plan_and_rejects_gaps_extras_and_changes(tmp_path):
    spec = make_spec(tmp_path)
    parts = written_parts(tmp_path, spec, [30, 30, 20])
    expected = {0: 30, 1: 30, 2: 20}
    verify_parts(parts, expected)
    with pytest.raises(SamplingError, match=r"missing \[2\]"):
        verify_parts(parts[:2], expected)
    with pytest.raises(SamplingError, match=r"unexpected \[2\]"):
        verify_parts(parts, {0: 30, 1: 30})
    with pytest.raises(SamplingError, match="rows"):
        verify_parts(parts, {0: 30, 1: 30, 2: 25})
    write_bytes(parts[1].uri, encode_part(mixed_frame(30, seed=9), spec))  # rewritten behind our back
    with pytest.raises(SamplingError, match="part 1 changed"):
        verify_parts(parts, expected)
    assert not list(tmp_path.glob(".*.tmp"))  # writes leave no temporary files


def test_output_is_streamed_into_files_of_rows_per_file(tmp_path):
    spec = make_spec(tmp_path)
    rows = SampledRows(tuple(written_parts(tmp_path, spec, [70, 70, 45])))
    files = write_parquet(rows.batches(batch_rows=16), tmp_path / "out", spec=spec, metadata={"epsilon": "1.0"},
                          rows_per_file=60)
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [60, 60, 60, 5]
    together = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    pd.testing.assert_frame_equal(together, rows.read())
    assert all(read_release_metadata(f)["epsilon"] == "1.0" for f in files)
    empty = write_parquet(iter(()), tmp_path / "empty", spec=spec, metadata={})
    assert len(empty) == 1 and pq.ParquetFile(empty[0]).metadata.num_rows == 0


def test_the_local_cluster_is_sized_for_the_machine_and_the_shards(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    monkeypatch.setattr("safesynth.sampling.cluster._cores", lambda: 8)
    plan = plan_cluster(spec_with(tmp_path), shards=3)
    assert (plan.kind, plan.address, plan.workers, plan.torch_threads) == ("local", None, 3, 2)
    plan = plan_cluster(spec_with(tmp_path, workers=2), shards=50)
    assert (plan.workers, plan.torch_threads, plan.gpu_per_worker) == (2, 4, 0)


def test_the_scheduler_comes_from_the_spec_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_DASK_SCHEDULER", "tcp://10.0.0.5:8786")
    assert scheduler_address(spec_with(tmp_path)) == "tcp://10.0.0.5:8786"
    assert scheduler_address(spec_with(tmp_path, scheduler="tcp://sched:1")) == "tcp://sched:1"
    assert plan_cluster(spec_with(tmp_path), shards=2).kind == "external"
    monkeypatch.setenv("SAFESYNTH_DASK_SCHEDULER", "sched:8786")
    with pytest.raises(SpecError, match="SAFESYNTH_DASK_SCHEDULER"):
        scheduler_address(spec_with(tmp_path))


def test_spec_refuses_a_scheduler_that_is_not_an_address(tmp_path):
    with pytest.raises(SpecError, match="scheduler"):
        spec_with(tmp_path, scheduler="localhost:8786")


def test_gpu_asks_that_cannot_be_met_here_are_cluster_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    monkeypatch.setattr("safesynth.sampling.cluster._cuda_devices", lambda: 0)
    with pytest.raises(ClusterError, match="no CUDA device"):
        plan_cluster(spec_with(tmp_path, gpu=True), shards=2)
    assert ClusterError("x").exit_code == 2
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # not installed
    with pytest.raises(ClusterError, match=r"safesynth\[cuda\]"):
        plan_cluster(spec_with(tmp_path, cluster="cuda"), shards=2)
    monkeypatch.setattr("safesynth.sampling.cluster._cuda_devices", lambda: 2)
    plan = plan_cluster(spec_with(tmp_path, gpu=True), shards=2)
    assert (plan.workers, plan.gpu_per_worker) == (1, 1)  # one worker advertising resources={"GPU": 1}


def test_an_llm_on_a_gpu_machine_samples_on_one_gpu_worker_unless_told_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    monkeypatch.setattr("safesynth.sampling.cluster._cuda_devices", lambda: 1)
    monkeypatch.setattr("safesynth.sampling.cluster._cores", lambda: 8)
    llm = make_spec(tmp_path, generator={"kind": "llm"}, sampling={"rows": 1000, "seed": 0, "shard_rows": 100})
    assert (plan_cluster(llm, shards=10).workers, plan_cluster(llm, shards=10).gpu_per_worker) == (1, 1)
    cpu = make_spec(tmp_path, generator={"kind": "llm", "device": "cpu"},
                    sampling={"rows": 1000, "seed": 0, "shard_rows": 100})
    assert (plan_cluster(cpu, shards=10).workers, plan_cluster(cpu, shards=10).gpu_per_worker) == (8, 0)


def test_preflight_refuses_a_model_store_fsspec_cannot_open(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    with pytest.raises(SpecError, match="model_store"):
        preflight_cluster(spec_with(tmp_path, model_store="nosuchprotocol://bucket/x"))
    preflight_cluster(spec_with(tmp_path, model_store=f"file://{tmp_path}/store"))  # fine, nothing started


def test_prewarming_starts_nothing_where_sampling_will_not_start_a_local_cluster(tmp_path, monkeypatch):
    import multiprocessing.forkserver as forkserver

    started = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: started.append(True))
    monkeypatch.setenv("SAFESYNTH_DASK_SCHEDULER", "tcp://127.0.0.1:9")
    assert prewarm_workers(spec_with(tmp_path)) is False  # an existing scheduler's workers are the operator's
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER")
    monkeypatch.setattr("safesynth.sampling.cluster._cuda_devices", lambda: 0)
    assert prewarm_workers(spec_with(tmp_path, gpu=True)) is False  # the sample stage reports the error
    assert prewarm_workers(spec_with(tmp_path, cluster="cuda")) is False
    assert started == []
    assert prewarm_workers(spec_with(tmp_path)) is True and started == [True]


def test_a_shard_write_never_recreates_a_removed_parts_directory(tmp_path):
    """A shard still running after its run failed (Dask cannot stop a running task) writes after the run
    removed or quarantined its work directory: the write fails and leaves nothing, not a fresh directory."""
    gone = tmp_path / "run" / "parts" / "part-00001.parquet"
    with pytest.raises(FileNotFoundError):
        write_bytes(str(gone), b"rows")
    assert not (tmp_path / "run").exists()
    gone.parent.mkdir(parents=True)
    write_bytes(str(gone), b"rows")
    assert gone.read_bytes() == b"rows" and [p.name for p in gone.parent.iterdir()] == [gone.name]


def test_removing_the_parts_directory_leaves_nothing_even_while_a_shard_writes(tmp_path):
    """remove_tree renames the directory before removing it, so a write racing with it fails instead of
    keeping the directory alive (rmtree on the live directory left it behind in CI); missing is fine."""
    from safesynth.sampling.parts import remove_tree

    parts = tmp_path / "parts"
    parts.mkdir()
    write_bytes(str(parts / "part-00000.parquet"), b"rows")
    fd, _ = tempfile.mkstemp(dir=parts)  # a shard's temporary file, open while the run is removed
    remove_tree(str(parts))
    with pytest.raises(FileNotFoundError):  # the shard's rename into place, after the removal
        write_bytes(str(parts / "part-00001.parquet"), b"late")
    os.close(fd)
    assert list(tmp_path.iterdir()) == []
    remove_tree(str(parts))  # already gone
    (tmp_path / "file").write_bytes(b"x")
    remove_tree(str(tmp_path / "file"))
    assert list(tmp_path.iterdir()) == []
