"""The restricted zone on disk: one private work directory per release attempt, and who owns it.

Every attempt gets its own directory, ``$SAFESYNTH_HOME/runs/<dataset>/<release_id>/<attempt token>``
(mode 0700, owner only), so concurrent runs of one release id, or two datasets that happen to use the same
id, never share private files. The directory holds the private rows while a release runs; it is removed on
every exit path (:meth:`Workspace.close`), and a directory left by a process that died (``kill -9``, power
loss) is removed by the next run on the same host (:func:`sweep_stale`).

Exact diagnostics for the data owner (validation counts, attack figures, the plan and account) are kept in
``$SAFESYNTH_HOME/reports/<dataset>/<release_id>/<attempt token>/`` (mode 0700): restricted, never
published. Private rows never go there.

Liveness: an :class:`Owner` names a process by host, pid and the process's start time, so a recycled pid
does not keep a dead run "alive". On another host nothing can be known, and nothing is removed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Owner", "Workspace", "safesynth_home", "sweep_stale"]

log = logging.getLogger("safesynth")

OWNER_FILE = "owner.json"


def safesynth_home() -> Path:
    """``$SAFESYNTH_HOME`` (default ``./.safesynth``), absolute."""
    return Path(os.environ.get("SAFESYNTH_HOME", ".safesynth")).resolve()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _safe_host(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:48]


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """The process that owns a run directory, a staging directory or a ledger reservation."""

    host: str
    pid: int
    started: str | None

    @classmethod
    def current(cls) -> Owner:
        return cls(host=socket.gethostname(), pid=os.getpid(), started=_process_start(os.getpid()))

    def token(self) -> str:
        """A short file-name-safe form: ``<host>.<pid>.<start>``."""
        return f"{_safe_host(self.host)}.{self.pid}.{self.started or 0}"

    @classmethod
    def from_token(cls, token: str) -> Owner | None:
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(host=parts[0], pid=int(parts[1]), started=None if parts[2] == "0" else parts[2])

    def is_dead(self) -> bool:
        """True only when the owner is known to be gone: same host, and no such process (or a new one)."""
        here = Owner.current()
        if _safe_host(self.host) != _safe_host(here.host):
            return False
        if self.pid == here.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # exists, owned by someone else
        started = _process_start(self.pid)
        return self.started is not None and started is not None and started != self.started


@dataclass(frozen=True, slots=True, kw_only=True)
class Workspace:
    """One attempt's private directories. Small and picklable (it travels between Prefect tasks)."""

    workdir: str
    reports: str

    @classmethod
    def create(cls, dataset: str, release_id: str) -> Workspace:
        """Make fresh, owner-only directories for one attempt (after sweeping dead runs)."""
        home = safesynth_home()
        sweep_stale(home)
        token = f"{int(time.time())}-{secrets.token_hex(4)}"
        workdir = home / "runs" / dataset / release_id / token
        reports = home / "reports" / dataset / release_id / token
        for path in (workdir, reports):
            _private_dirs(home, path)
        (workdir / OWNER_FILE).write_text(json.dumps(asdict(Owner.current())))
        return cls(workdir=str(workdir), reports=str(reports))

    def path(self, name: str) -> Path:
        return Path(self.workdir) / name

    def report(self, name: str) -> Path:
        return Path(self.reports) / name

    def close(self) -> None:
        """Remove the work directory and everything in it (private rows, models); keep the reports."""
        _remove_run(Path(self.workdir))


def _private_dirs(home: Path, path: Path) -> None:
    """``mkdir -p`` where every directory from ``home`` down is mode 0700."""
    home.mkdir(parents=True, exist_ok=True)
    current = home
    for part in path.relative_to(home).parts:
        current = current / part
        current.mkdir(exist_ok=True, mode=0o700)
        os.chmod(current, 0o700)


def _remove_run(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    for parent in (workdir.parent, workdir.parent.parent):  # <release_id>, then <dataset>, when empty
        try:
            parent.rmdir()
        except OSError:
            break


def sweep_stale(home: Path | None = None) -> int:
    """Remove run directories whose owner process died on this host. Returns how many were removed."""
    runs = (home or safesynth_home()) / "runs"
    removed = 0
    for owner_file in runs.glob(f"*/*/*/{OWNER_FILE}") if runs.is_dir() else ():
        try:
            owner = Owner(**json.loads(owner_file.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if owner.is_dead():
            _remove_run(owner_file.parent)
            removed += 1
    if removed:
        log.info("removed %d work director%s left by runs that died", removed, "y" if removed == 1 else "ies")
    return removed
