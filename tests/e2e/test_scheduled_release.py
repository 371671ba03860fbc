"""Scheduled releases end to end: a real Prefect server, a process worker, `safesynth deploy`, a slot run.

Started by the test and stopped in any case: ``prefect server start`` (SQLite in a temporary Prefect home,
a free loopback port) and ``prefect worker start --type process`` (see ``tests/prefect_server.py``).
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
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import AwaitingRetry

from tests.conftest import REPO
from tests.prefect_server import prefect_server, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = "safesynth-e2e"
#: A slot of the deployed schedule, Mondays 02:00 Europe/Berlin: 01:00 UTC in winter.
SLOT = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
SLOT_ID = "demo-2026-11-30T01-00Z"


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


def test_a_deployed_slot_publishes_once_and_reruns_spend_nothing(tmp_path, safesynth_home):
    spec = small_spec(tmp_path)
    with prefect_server(tmp_path / "prefect", pools=(POOL,)) as api_url:
        env = {**server_env(tmp_path / "prefect", api_url), "SAFESYNTH_HOME": str(safesynth_home)}
        deployed = subprocess.run(
            [str(Path(sys.executable).with_name("safesynth")), "deploy", str(spec), "--cron", "0 2 * * 1",
             "--timezone", "Europe/Berlin", "--pool", POOL],
            env=env, capture_output=True, text=True, timeout=120)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "safesynth-release/demo" in deployed.stdout
        with temporary_settings({PREFECT_API_URL: api_url}):
            # The slot runs on the worker (its scheduled time is in the past: it starts now).
            first = run_deployment("safesynth-release/demo", scheduled_time=SLOT, timeout=0)
            first = wait_final(first.id)
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
                assert any(f"release {SLOT_ID} is already published" in m for m in logs_of(run.id))
            assert retried.run_count == 2
    assert published(tmp_path) == files  # nothing published again
    assert ledger_rows(safesynth_home) == spent  # no new attempt, nothing spent again
