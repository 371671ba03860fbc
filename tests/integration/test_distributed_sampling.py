"""Distributed sampling on real Dask clusters: an external scheduler with two worker processes on
loopback, a worker killed mid-shard, a shard that keeps killing workers, and a GPU ask on a CPU cluster.

Sampling is compared at the sampling layer on one fitted model (a release's fit draws fresh OS noise, so
two releases never share a model); the release-level tests check what users see: exit codes, one-line
errors, nothing published, the flow's state.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from safesynth.errors import ClusterError, SamplingError
from safesynth.generator import get_backend
from safesynth.privacy.accountant import ReleaseAccount
from safesynth.privacy.noise import SeededNoise
from safesynth.privacy.planner import plan_budget
from safesynth.sampling import SampledRows, sample_on_cluster, scratch_for, shard_plan
from safesynth.sampling.cluster import plan_cluster
from tests.conftest import REPO
from tests.dask_cluster import KillShard, dask_cluster
from tests.helpers import make_spec, mixed_frame, rows_valid

pytestmark = [pytest.mark.slow]

SHARDS = 6
ROWS = 1_200


@pytest.fixture(autouse=True)
def _no_scheduler_from_the_environment(monkeypatch):
    """Tests here name their scheduler, or start a LocalCluster: never one from the environment."""
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` + two ``dask worker`` processes (one thread each) on 127.0.0.1."""
    with dask_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One marginals model (test noise), saved; every sampling run below reads this same model."""
    tmp = tmp_path_factory.mktemp("model")
    spec = make_spec(tmp, sampling={"rows": ROWS, "seed": 4, "shard_rows": ROWS // SHARDS})
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    model = get_backend("marginals").fit(mixed_frame(800, seed=1), spec=spec, plan=plan_budget(spec),
                                         account=account, noise=SeededNoise(0), workdir=None)
    model.save(tmp / "model")
    return spec, tmp / "model"


def sample(spec, model_dir: Path, work: Path, **kwargs) -> SampledRows:
    work.mkdir(parents=True, exist_ok=True)
    return sample_on_cluster(spec, model_dir, scratch_for(spec, model_dir, work, dataset="unit", release_id="r"),
                             **kwargs)


def with_scheduler(spec, address: str, **sampling):
    return spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"scheduler": address, **sampling})})


@pytest.fixture(scope="module")
def undisturbed(cluster, fitted, tmp_path_factory):
    spec, model_dir = fitted
    progress = []
    out = sample(with_scheduler(spec, cluster), model_dir, tmp_path_factory.mktemp("undisturbed"),
                 progress=progress.append)
    return out, out.read(), progress


def test_an_external_scheduler_samples_every_shard_once(undisturbed, fitted):
    rows, frame, progress = undisturbed
    spec, _ = fitted
    assert [p.shard for p in rows.parts] == list(range(SHARDS))
    assert [p.rows for p in rows.parts] == [s.rows for s in shard_plan(spec)]
    assert len(frame) == ROWS and rows_valid(frame, spec)
    assert [p.shards_done for p in progress] == list(range(1, SHARDS + 1))
    assert progress[-1].rows_done == ROWS and progress[-1].rows == ROWS


def test_the_same_plan_gives_the_same_rows_on_a_local_cluster(undisturbed, fitted, tmp_path):
    spec, model_dir = fitted
    _, frame, _ = undisturbed
    assert plan_cluster(spec, shards=SHARDS).kind == "local"
    local = sample(spec, model_dir, tmp_path).read()  # a LocalCluster started for the call
    pd.testing.assert_frame_equal(local, frame)


def _worker_view() -> dict[str, object]:
    import os
    import sys

    return {"parent": os.getppid(), "preloaded": "safesynth.sampling.shards" in sys.modules,
            "variable": os.environ.get("SAFESYNTH_TEST_LATE_VARIABLE"), "hash": hash("safesynth")}


def test_local_workers_are_forks_of_one_preloaded_server_and_see_the_clients_environment(fitted, monkeypatch):
    """Workers fork from a fork server that imported their modules once; a variable the client sets after
    that server started still reaches the workers of a later cluster (as a spawned worker would see it)."""
    import os
    import subprocess
    import sys

    from safesynth.sampling.cluster import open_client

    spec, _ = fitted
    plan = plan_cluster(spec, shards=2)
    assert plan.kind == "local" and "safesynth.sampling.shards" in plan.preload
    with open_client(plan, announce=False) as client:
        first = list(client.run(_worker_view).values())
    monkeypatch.setenv("SAFESYNTH_TEST_LATE_VARIABLE", "late")
    with open_client(plan, announce=False) as client:
        second = list(client.run(_worker_view).values())
    parents = {view["parent"] for view in first + second}
    assert len(parents) == 1 and os.getpid() not in parents  # one fork server, not this process
    assert all(view["preloaded"] for view in first + second)
    assert [view["variable"] for view in second] == ["late"] * len(second)
    seeded = subprocess.run([sys.executable, "-c", "print(hash('safesynth'))"], env={**os.environ, "PYTHONHASHSEED": "6640"},
                            capture_output=True, text=True, check=True)
    assert {view["hash"] for view in first + second} == {int(seeded.stdout)}  # Dask's fixed seed, as when spawned


def test_workers_of_a_prewarmed_release_fork_from_the_server_started_during_the_fit(fitted):
    import psutil

    from safesynth.sampling.cluster import open_client, prewarm_workers

    spec, _ = fitted
    assert prewarm_workers(spec)
    servers = [p for p in psutil.Process().children() if "forkserver" in " ".join(_cmdline(p))]
    assert len(servers) == 1  # started now, or by an earlier cluster of this process: never a second one
    with open_client(plan_cluster(spec, shards=2), announce=False) as client:
        parents = set(client.run(_worker_view_parent).values())
    assert parents == {servers[0].pid}


def _cmdline(proc) -> list[str]:
    """A child's command line; empty for one that exited meanwhile (a zombie has none to read)."""
    import psutil

    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _worker_view_parent() -> int:
    import os

    return os.getppid()


def test_a_worker_killed_mid_shard_costs_only_that_shard(cluster, fitted, undisturbed, tmp_path):
    from distributed import Client

    spec, model_dir = fitted
    marker = tmp_path / "killed-once"
    with Client(cluster) as client:
        client.register_plugin(KillShard("-00002", marker=str(marker)))
        try:
            rows = sample(with_scheduler(spec, cluster, worker_wait_s=60), model_dir, tmp_path / "work")
        finally:
            client.unregister_worker_plugin(KillShard.name)
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker for later tests
    assert marker.exists(), "the plugin never killed a worker: the test did not test anything"
    frame = rows.read()
    assert len(frame) == ROWS and [p.shard for p in rows.parts] == list(range(SHARDS))  # no gap, no duplicate
    pd.testing.assert_frame_equal(frame, undisturbed[1])  # identical to the undisturbed run
    parts = sorted(p.name for p in (tmp_path / "work" / "parts").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(SHARDS)]  # no temporary files left


@pytest.fixture(scope="module")
def fragile_cluster(tmp_path_factory):
    """A cluster whose scheduler gives up on a task after one killed worker.

    A worker-saturation of 1.0 keeps one shard at a time on each 1-thread worker; with Dask's default (1.1)
    a second shard queued on a dying worker is blamed too and may be the one reported.
    """
    with dask_cluster(tmp_path_factory.mktemp("fragile"),
                      config={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
                              "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}) as address:
        from distributed import Client

        with Client(address) as client:
            client.register_plugin(KillShard("-00001"))  # kills every worker that starts shard 1
        yield address


def test_a_shard_that_keeps_killing_workers_fails_and_leaves_no_parts(fragile_cluster, fitted, tmp_path):
    spec, model_dir = fitted
    with pytest.raises(SamplingError, match=r"^shard 1 was lost with every worker that ran it .*nothing was published$"):
        sample(with_scheduler(spec, fragile_cluster, worker_wait_s=60), model_dir, tmp_path)
    assert not (tmp_path / "parts").exists()


def test_a_gpu_ask_on_a_cpu_cluster_fails_fast(cluster, fitted, tmp_path):
    spec, model_dir = fitted
    start = time.monotonic()
    with pytest.raises(ClusterError, match="none of the cluster's 2 workers advertises a GPU"):
        sample(with_scheduler(spec, cluster, gpu=True, worker_wait_s=600), model_dir, tmp_path)
    assert time.monotonic() - start < 60  # not worker_wait_s, and certainly not forever


def test_a_gpu_ask_without_a_scheduler_fails_in_the_plan_here(fitted, monkeypatch):
    spec, _ = fitted
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    gpu = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"gpu": True})})
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ClusterError, match="no CUDA device"):
        plan_cluster(gpu, shards=2)


def test_a_model_store_on_s3_carries_the_model_and_the_parts(fitted, undisturbed, s3_endpoint, tmp_path,
                                                            monkeypatch):
    """Remote workers read the model from, and write their parts to, ``sampling.model_store``."""
    import s3fs

    from safesynth.sampling.parts import remove_tree

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)  # workers of the LocalCluster inherit them
    monkeypatch.delenv("SAFESYNTH_DASK_SCHEDULER", raising=False)
    spec, model_dir = fitted
    spec = spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"model_store": "s3://releases/scratch"})})
    scratch = scratch_for(spec, model_dir, tmp_path, dataset="unit", release_id="r")
    rows = sample_on_cluster(spec, model_dir, scratch)
    assert scratch.remote_prefix is not None and scratch.remote_prefix.startswith("s3://releases/scratch/unit/r/")
    assert all(p.uri.startswith(scratch.remote_prefix + "/parts/part-") for p in rows.parts)
    pd.testing.assert_frame_equal(rows.read(), undisturbed[1])
    assert not (tmp_path / "parts").exists()  # nothing went through the client's disk
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.ls(scratch.remote_prefix.removeprefix("s3://") + "/model")  # the model was uploaded once
    remove_tree(scratch.remote_prefix)
    assert not fs.exists(scratch.remote_prefix.removeprefix("s3://"))


# ------------------------------------------------------------------------------------ releases


def release_spec(tmp_path: Path, **sampling) -> Path:
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data["source"] = str((REPO / "data" / data["source"]).resolve())
    data["publish"] = {"target": str(tmp_path / "releases")}
    data["sampling"] = {**data["sampling"], "rows": 900, "shard_rows": 300, **sampling}
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_local(spec: Path, release_id: str):
    from safesynth.flows.cli import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, ["release", str(spec), "--release-id", release_id, "--engine", "local"],
                              catch_exceptions=False)


@pytest.mark.e2e
def test_a_release_samples_on_the_scheduler_it_names(cluster, tmp_path, safesynth_home):
    result = run_local(release_spec(tmp_path, scheduler=cluster), "on-cluster")
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "releases").rglob("*.parquet"))
    assert sum(len(pd.read_parquet(f)) for f in files) == 900
    assert "Traceback" not in result.output


@pytest.mark.e2e
def test_a_gpu_release_on_a_cpu_cluster_is_refused_before_the_budget(cluster, tmp_path, safesynth_home):
    result = run_local(release_spec(tmp_path, scheduler=cluster, gpu=True), "gpu-ask")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "advertises a GPU" in lines[0]
    assert "reserve" not in result.output.lower()  # refused in pre-flight, before the reservation
    assert not (tmp_path / "releases").exists()


@pytest.mark.e2e
def test_an_unreachable_scheduler_is_refused_before_the_budget(tmp_path, safesynth_home):
    result = run_local(release_spec(tmp_path, scheduler="tcp://127.0.0.1:9"), "nowhere")
    assert result.exit_code == 2, result.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
    assert not (tmp_path / "releases").exists()


@pytest.mark.e2e
def test_a_poisoned_shard_fails_the_flow_and_publishes_nothing(fragile_cluster, tmp_path, safesynth_home,
                                                              prefect_harness):
    from safesynth.flows.release import release

    spec = release_spec(tmp_path, scheduler=fragile_cluster, worker_wait_s=60)
    state = release(str(spec), "poisoned", return_state=True)
    assert state.is_failed()
    assert "shard 1 was lost with every worker that ran it" in state.message and "\n" not in state.message
    assert not (tmp_path / "releases").exists() or not any((tmp_path / "releases").rglob("*.parquet"))
    runs = safesynth_home / "runs"
    assert not runs.exists() or not any(runs.rglob("*.parquet"))  # the private parts are gone too


# ---------------------------------------------------------------- in-context generation on the cluster


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.unit.generator.incontext.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def test_incontext_texts_are_decoded_on_the_schedulers_workers_with_the_noise_on_the_driver(cluster, tiny_llama,
                                                                                          tmp_path, caplog):
    """Two external workers each hold the model; the texts equal the driver's with the same subsamples."""
    from tests.unit.generator.incontext.conftest import incontext_spec, review_frame
    from tests.unit.generator.incontext.test_worker import ZeroNoise

    frame = review_frame(60)
    here = incontext_spec(tmp_path, tiny_llama, rows=5, max_new_tokens=4)
    there = with_scheduler(incontext_spec(tmp_path, tiny_llama, rows=5, max_new_tokens=4, distributed=True),
                           cluster)

    def fit(spec, workdir):
        account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
        return get_backend("incontext").fit(frame, spec=spec, plan=plan_budget(spec), account=account,
                                            noise=ZeroNoise(), workdir=workdir)

    with caplog.at_level("INFO", logger="safesynth"):
        remote = fit(there, tmp_path / "there")
    assert any(f"in-context DP generation on {cluster}: 2 workers" in r.getMessage() for r in caplog.records)
    assert remote.pool == fit(here, tmp_path / "here").pool


def test_incontext_asking_for_gpu_workers_on_a_cpu_cluster_fails_before_any_spend(cluster, tiny_llama, tmp_path):
    from tests.unit.generator.incontext.conftest import incontext_spec, review_frame

    spec = with_scheduler(incontext_spec(tmp_path, tiny_llama, rows=2, distributed=True), cluster, gpu=True)
    account = ReleaseAccount(delta=spec.privacy.delta, accountant=spec.privacy.accountant)
    with pytest.raises(ClusterError, match="advertises a GPU"):
        get_backend("incontext").fit(review_frame(20), spec=spec, plan=plan_budget(spec), account=account,
                                     noise=SeededNoise(0), workdir=tmp_path)
    assert account.spends == []
