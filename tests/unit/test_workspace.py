"""Private work directories: one per attempt, owner-only, removed or quarantined when the run ends, swept after
crashes and when their quarantine expires."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safesynth.errors import SpecError
from safesynth.owner import Owner
from safesynth.publish import sweep_staging
from safesynth.workspace import OWNER_FILE, QUARANTINE_FILE, Workspace, sweep_quarantine, sweep_stale


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


# ----------------------------------------------------------------------------- retention, quarantine


def modes(path: Path, home: Path) -> set[int]:
    """The modes of ``path`` and of every directory between it and ``home``."""
    return {stat.S_IMODE(p.stat().st_mode) for p in (path, *path.parents) if p != home and home in p.parents}


@pytest.mark.parametrize("status", ["blocked", "failed"])
def test_a_release_that_read_data_and_did_not_publish_is_quarantined_owner_only(safesynth_home, status):
    ws = Workspace.create("demo", "r1")
    ws.path("train.parquet").write_bytes(b"private rows")
    ws.report("audit.json").write_text("{}")
    before = datetime.now(UTC)
    where = ws.finish(status, data_read=True)
    assert where is not None and where.relative_to(safesynth_home / "quarantine") == Path("demo", "r1", where.name)
    assert where.name == Path(ws.workdir).name  # the attempt's token
    assert (where / "train.parquet").read_bytes() == b"private rows"
    assert modes(where, safesynth_home) == {0o700}  # quarantine/, demo/, r1/ and the attempt
    marker = json.loads((where / QUARANTINE_FILE).read_text())
    assert marker["status"] == status and marker["retention_days"] == 7.0
    expires = datetime.fromisoformat(marker["expires_at"])
    assert timedelta(days=7) - timedelta(seconds=5) <= expires - before <= timedelta(days=7, seconds=5)
    assert not (safesynth_home / "runs" / "demo").exists()  # nothing private left under runs/
    assert ws.report("audit.json").exists()


@pytest.mark.parametrize(("status", "data_read"), [("published", True), ("already_published", True),
                                                   ("failed", False), ("blocked", False)])
def test_a_published_release_or_one_that_never_read_data_is_removed(safesynth_home, status, data_read):
    ws = Workspace.create("demo", "r1")
    ws.path("model.bin").write_bytes(b"x")
    assert ws.finish(status, data_read=data_read) is None
    assert not Path(ws.workdir).exists() and not (safesynth_home / "quarantine").exists()


def test_retention_delete_removes_a_failed_release_too(safesynth_home, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_WORKDIR_ON_FAILURE", "delete")
    ws = Workspace.create("demo", "r1")
    assert ws.finish("failed", data_read=True) is None
    assert not Path(ws.workdir).exists() and not (safesynth_home / "quarantine").exists()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SAFESYNTH_WORKDIR_ON_FAILURE", "keep", "must be 'quarantine' or 'delete'"),
    ("SAFESYNTH_QUARANTINE_DAYS", "-1", "must be a number of days >= 0"),
    ("SAFESYNTH_QUARANTINE_DAYS", "nan", "must be a number of days >= 0"),
    ("SAFESYNTH_QUARANTINE_DAYS", "a week", "must be a number of days >= 0"),
])
def test_bad_retention_settings_are_refused_before_any_directory_is_made(safesynth_home, monkeypatch, name, value,
                                                                         message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SpecError, match=message) as info:
        Workspace.create("demo", "r1")
    assert info.value.exit_code == 2 and name in str(info.value)
    assert not (safesynth_home / "runs").exists()


def test_the_next_run_sweeps_quarantines_past_their_retention(safesynth_home, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_QUARANTINE_DAYS", "0.5")
    kept = Workspace.create("demo", "kept").finish("failed", data_read=True)
    monkeypatch.setenv("SAFESYNTH_QUARANTINE_DAYS", "0")
    expired = Workspace.create("demo", "expired").finish("blocked", data_read=True)
    assert kept is not None and expired is not None and expired.exists()
    broken = Workspace.create("other", "r1").finish("failed", data_read=True)  # also sweeps `expired`
    assert not expired.exists() and not expired.parent.exists() and kept.exists()
    assert broken is not None
    (broken / QUARANTINE_FILE).write_text("not json")  # no date to keep it by: removed
    assert sweep_quarantine(safesynth_home) == 1 and not (safesynth_home / "quarantine" / "other").exists()
    assert sweep_quarantine(safesynth_home, now=datetime.now(UTC) + timedelta(hours=11)) == 0
    assert sweep_quarantine(safesynth_home, now=datetime.now(UTC) + timedelta(hours=13)) == 1
    assert list((safesynth_home / "quarantine").iterdir()) == []
