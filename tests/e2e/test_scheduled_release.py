"""Scheduled releases end to end: a real Prefect server, a process worker, `safesynth deploy` and `serve`.

Started by the tests and stopped in any case: ``prefect server start`` (SQLite in a temporary Prefect home,
a free loopback port) and ``prefect worker start --type process`` (see ``tests/prefect_server.py``), once
for the module; ``safesynth serve`` for its test.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import AwaitingRetry

from tests.conftest import REPO
from tests.dask_cluster import _stop
from tests.prefect_server import prefect_server, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = "safesynth-e2e"
#: A slot of the deployed schedule, Mondays 02:00 Europe/Berlin: 01:00 UTC in winter.
SLOT = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
SLOT_ID = "demo-2026-11-30T01-00Z"


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A Prefect server and a process worker on POOL for the module; yields (API URL, Prefect home)."""
    home = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(home, pools=(POOL,)) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        yield api_url, home


def safesynth_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("safesynth")), *args]


def small_spec(tmp_path: Path) -> Path:
    """The demo spec, sampling few rows on one local worker: a release of a few seconds."""
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data["source"] = str(REPO / "data" / "demo.csv")
    data["publish"] = {"target": str(tmp_path / "releases")}
    data["sampling"] = {"rows": 300, "seed": 0, "workers": 1}
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def ledger_rows(home: Path) -> list[dict]:
    with sqlite3.connect(home / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "select release_id, status, attempt, spent_epsilon, spent_delta from safesynth_budget_releases")]


def published(tmp_path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((tmp_path / "releases").rglob("*")) if p.is_file()}


def wait_final(flow_run_id, timeout: float = 240.0):
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run still {run.state}"
            time.sleep(1)


def logs_of(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def test_a_deployed_slot_publishes_once_and_reruns_spend_nothing(tmp_path, safesynth_home, prefect_api):
    api_url, prefect_home = prefect_api
    spec = small_spec(tmp_path)
    env = {**server_env(prefect_home, api_url), "SAFESYNTH_HOME": str(safesynth_home)}
    deployed = subprocess.run(safesynth_cmd("deploy", str(spec), "--cron", "0 2 * * 1", "--timezone",
                                            "Europe/Berlin", "--pool", POOL),
                              env=env, capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "safesynth-release/demo" in deployed.stdout
    # The slot runs on the worker (its scheduled time is in the past: it starts now).
    first = wait_final(run_deployment("safesynth-release/demo", scheduled_time=SLOT, timeout=0).id)
    assert first.state.is_completed(), (first.state, logs_of(first.id))
    assert first.name == SLOT_ID  # named after the dataset and the release id
    assert first.parameters == {"spec_path": str(spec.resolve())}
    files = published(tmp_path)
    assert tmp_path / "releases" / "demo" / SLOT_ID / "manifest.json" in files
    spent = ledger_rows(safesynth_home)
    assert [(r["release_id"], r["status"]) for r in spent] == [(SLOT_ID, "published")]
    assert spent[0]["spent_epsilon"] > 0

    # The same slot again, as a new flow run: the same id, already published, nothing spent.
    second = wait_final(run_deployment("safesynth-release/demo", scheduled_time=SLOT, timeout=0).id)
    # A manual retry of the first flow run (its expected start time is kept).
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first.id, AwaitingRetry(), force=True)
    time.sleep(1)
    retried = wait_final(first.id)
    for run in (second, retried):
        assert run.state.is_completed(), (run.state, logs_of(run.id))
        assert run.name == SLOT_ID
        assert "already published" in (run.state.message or "")
        deadline = time.monotonic() + 60  # workers ship their logs to the server in batches
        while not any(f"release {SLOT_ID} is already published" in m for m in logs_of(run.id)):
            assert time.monotonic() < deadline, logs_of(run.id)
            time.sleep(1)
    assert retried.run_count == 2
    assert published(tmp_path) == files  # nothing published again
    assert ledger_rows(safesynth_home) == spent  # no new attempt, nothing spent again


def test_a_served_deployment_runs_its_slot_without_a_worker(tmp_path, safesynth_home, prefect_api):
    api_url, prefect_home = prefect_api
    spec = small_spec(tmp_path)
    env = {**server_env(prefect_home, api_url), "SAFESYNTH_HOME": str(safesynth_home)}
    logs = tmp_path / "serve.log"
    serving = subprocess.Popen(safesynth_cmd("serve", str(spec), "--timezone", "Europe/Berlin", "--name", "served"),
                               env=env, stdout=logs.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                assert serving.poll() is None, logs.read_text()[-2000:]
                assert time.monotonic() < deadline, logs.read_text()[-2000:]
                try:
                    deployment = client.read_deployment_by_name("safesynth-release/served")
                    break
                except ObjectNotFound:
                    time.sleep(1)
            assert deployment.work_pool_name is None  # served: no pool, no worker
            (schedule,) = deployment.schedules
            assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * 1", "Europe/Berlin")
        run = wait_final(run_deployment("safesynth-release/served", scheduled_time=SLOT, timeout=0).id)
        assert run.state.is_completed(), (run.state, logs_of(run.id), logs.read_text()[-2000:])
        assert run.name == SLOT_ID
        assert tmp_path / "releases" / "demo" / SLOT_ID / "manifest.json" in published(tmp_path)
    finally:
        _stop([serving])
