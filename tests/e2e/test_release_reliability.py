"""Reliability of whole releases: concurrent runs of one id, a crash mid-fit, a ledger busy at commit time."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from safesynth import stages
from safesynth.release import direct, run_release
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("shared_dask")]


def demo_spec(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data["source"] = str(REPO / "data" / "demo.csv")
    data["publish"] = {"target": str(tmp_path / "releases")}
    data.update(changes)
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "safesynth.flows.cli", *args]


def ledger_rows(home: Path) -> list[dict]:
    with sqlite3.connect(home / "ledger.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("select release_id, status, data_read from safesynth_budget_releases")]


def manifests(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "releases").rglob("manifest.json"))


def private_files(home: Path) -> list[Path]:
    runs = home / "runs"
    return [p for p in runs.rglob("*") if p.is_file() and p.name != "owner.json"] if runs.exists() else []


def test_six_concurrent_runs_of_one_release_id_publish_exactly_once(tmp_path, safesynth_home):
    spec = demo_spec(tmp_path)
    env = {**os.environ, "SAFESYNTH_HOME": str(safesynth_home)}
    procs = [subprocess.Popen(cli("release", str(spec), "--engine", "local", "--release-id", "same"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert len(manifests(tmp_path)) == 1
    for code, stdout, stderr in results:
        assert "Traceback" not in stdout + stderr
        if code:  # refused cleanly while another attempt held the id
            assert code == 1 and "in flight" in stderr, stderr
            assert sum(line.startswith("error:") for line in stderr.splitlines()) == 1, stderr
    rows = ledger_rows(safesynth_home)
    published = [r for r in rows if r["status"] == "published"]
    assert len(published) == 1, rows  # the ledger agrees with what is visible
    assert not [r for r in rows if r["status"] == "reserved"], rows
    assert codes.count(0) >= 1
    assert not private_files(safesynth_home)


def test_a_run_killed_while_fitting_leaves_no_private_rows_after_the_next_start(tmp_path, safesynth_home):
    llm = {"kind": "llm", "layers": 1, "hidden_size": 16, "heads": 1, "epochs": 50, "batch_size": 64,
           "physical_batch_size": 64, "context_length": 128}
    spec = demo_spec(tmp_path, generator=llm)
    env = {**os.environ, "SAFESYNTH_HOME": str(safesynth_home)}
    proc = subprocess.Popen(cli("release", str(spec), "--engine", "local", "--release-id", "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((safesynth_home / "runs").rglob("train.parquet")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the release ended before it was killed"
        time.sleep(0.05)
    time.sleep(1.0)  # well inside DP-SGD by now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(p.name in ("train.parquet", "holdout.parquet") for p in private_files(safesynth_home))

    nxt = subprocess.run(cli("release", str(demo_spec(tmp_path)), "--engine", "local", "--release-id", "next"),
                         env=env, capture_output=True, text=True, timeout=600)
    assert nxt.returncode == 0, nxt.stderr
    assert not private_files(safesynth_home)
    killed = [r for r in ledger_rows(safesynth_home) if r["release_id"] == "killed"]
    assert killed and all(r["data_read"] for r in killed)  # still charged: data was read


def test_a_ledger_locked_at_commit_time_does_not_turn_a_published_release_into_a_failure(
        tmp_path, safesynth_home, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_LEDGER_RETRY_SECONDS", "2")
    spec = demo_spec(tmp_path)
    holder: list[sqlite3.Connection] = []

    def lock_after_publish(name, fn, /, *args, **kwargs):
        result = direct(name, fn, *args, **kwargs)
        if name == "publish":  # another writer grabs the ledger right then, and holds it
            conn = sqlite3.connect(safesynth_home / "ledger.db", isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            holder.append(conn)
        return result

    outcome = run_release(spec, release_id="busy", run=lock_after_publish)
    assert outcome.status == "published" and outcome.exit_code == 0
    assert len(manifests(tmp_path)) == 1
    pending = list((safesynth_home / "pending").glob("*.json"))
    assert len(pending) == 1
    assert stat_mode(safesynth_home / "pending") == 0o700
    holder[0].execute("ROLLBACK")
    holder[0].close()
    assert [r["status"] for r in ledger_rows(safesynth_home)] == ["reserved"]

    stages.flush_pending()  # what the next run does first
    assert [r["status"] for r in ledger_rows(safesynth_home)] == ["published"]
    assert not list((safesynth_home / "pending").glob("*.json"))


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
