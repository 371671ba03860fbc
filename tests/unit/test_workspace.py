"""Private work directories: one per attempt, owner-only, removed on every exit path, swept after crashes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from safesynth.owner import Owner
from safesynth.publish import sweep_staging
from safesynth.workspace import OWNER_FILE, Workspace, sweep_stale


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_each_attempt_gets_its_own_private_directory(safesynth_home):
    a = Workspace.create("demo", "r1")
    b = Workspace.create("demo", "r1")
    assert a.workdir != b.workdir and a.reports != b.reports
    for path in (Path(a.workdir), Path(a.reports), safesynth_home / "runs" / "demo"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    other = Workspace.create("other", "r1")  # same release id, another dataset: separate too
    assert Path(other.workdir).parent.parent.name == "other"


def test_close_removes_rows_and_keeps_reports(safesynth_home):
    ws = Workspace.create("demo", "r1")
    ws.path("train.parquet").write_bytes(b"rows")
    ws.report("audit.json").write_text("{}")
    ws.close()
    assert not Path(ws.workdir).exists()
    assert not (safesynth_home / "runs" / "demo").exists()  # empty parents go too
    assert ws.report("audit.json").exists()


def test_sweep_removes_only_directories_of_dead_processes(safesynth_home):
    alive = Workspace.create("demo", "alive")
    crashed = Workspace.create("demo", "crashed")
    record = json.loads(crashed.path(OWNER_FILE).read_text())
    crashed.path(OWNER_FILE).write_text(json.dumps({**record, "pid": dead_pid()}))
    crashed.path("train.parquet").write_bytes(b"private rows")
    assert sweep_stale(safesynth_home) == 1
    assert not Path(crashed.workdir).exists()
    assert Path(alive.workdir).exists()


def owner(**changes) -> Owner:
    from dataclasses import replace

    return replace(Owner.current(), **changes)


def test_an_owner_on_another_host_is_never_declared_dead():
    assert owner(host="elsewhere", pid=dead_pid()).state() == "unknown"
    assert owner(pid=dead_pid()).state() == "dead"
    assert Owner.current().state() == "alive"


def test_a_recycled_pid_does_not_keep_a_dead_owner_alive():
    me = Owner.current()
    if me.start is None:
        pytest.skip("no /proc here")
    assert owner(pid=1, start=-1).state() == "dead"  # pid 1 exists, but started at another time


def test_stale_staging_directories_are_swept_but_live_ones_kept(tmp_path):
    dead = owner(pid=dead_pid(), start=123)
    stale = tmp_path / f".staging-{dead.file_token()}-0123abcd-r1"
    live = tmp_path / f".staging-{Owner.current().file_token()}-89abcdef-r1"
    for d in (stale, live):
        d.mkdir()
        (d / "part-00000.parquet").write_bytes(b"x")
    assert sweep_staging(tmp_path) == 1
    assert not stale.exists() and live.exists()
