"""The restricted zone on disk: one private work directory per release attempt, and who owns it.

Every attempt gets its own directory, ``$SAFESYNTH_HOME/runs/<dataset>/<release_id>/<attempt token>``
(mode 0700, owner only), so concurrent runs of one release id, or two datasets that happen to use the same
id, never share private files. The directory holds the private rows while a release runs. When the run
ends (:meth:`Workspace.finish`) it is removed, except after a blocked or failed release that read data:
then, by default, it is *quarantined* for the data owner to inspect, moved whole to
``$SAFESYNTH_HOME/quarantine/<dataset>/<release_id>/<attempt token>`` (every level mode 0700) with a
``quarantine.json`` saying until when; the next run on the host removes what has expired
(:func:`sweep_quarantine`). A directory left by a process that died (``kill -9``, power loss) is removed
by the next run on the same host (:func:`sweep_stale`).

Retention is operator configuration, read when the attempt starts (:meth:`Retention.from_env`):

* ``SAFESYNTH_WORKDIR_ON_FAILURE``: ``quarantine`` (default) or ``delete``;
* ``SAFESYNTH_QUARANTINE_DAYS``: how long a quarantined directory is kept, in days (default 7; ``0``: until
  the next run).

The quarantine is restricted zone like the work directory it was: it holds private rows and models.
It lives beside ``runs/``, not in it, so no dataset name can collide with it.

Exact diagnostics for the data owner (validation counts, attack figures, the plan and account) are kept in
``$SAFESYNTH_HOME/reports/<dataset>/<release_id>/<attempt token>/`` (mode 0700): restricted, never
published. Private rows never go there.

Liveness: see :class:`safesynth.owner.Owner` (a recycled pid does not keep a dead run "alive"; on another
host nothing can be known, and nothing is removed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safesynth.errors import SpecError
from safesynth.owner import Owner

__all__ = ["Retention", "Workspace", "safesynth_home", "sweep_quarantine", "sweep_stale"]

log = logging.getLogger("safesynth")

OWNER_FILE = "owner.json"
QUARANTINE_FILE = "quarantine.json"
ON_FAILURE_ENV = "SAFESYNTH_WORKDIR_ON_FAILURE"
QUARANTINE_DAYS_ENV = "SAFESYNTH_QUARANTINE_DAYS"
#: Outcomes whose work directory may be quarantined (when data was read); every other one is removed.
KEPT_OUTCOMES = ("blocked", "failed")


def safesynth_home() -> Path:
    """``$SAFESYNTH_HOME`` (default ``./.safesynth``), absolute."""
    return Path(os.environ.get("SAFESYNTH_HOME", ".safesynth")).resolve()


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """What happens to the work directory of a blocked or failed release that read data."""

    on_failure: Literal["quarantine", "delete"] = "quarantine"
    days: float = 7.0

    @classmethod
    def from_env(cls) -> Retention:
        """``$SAFESYNTH_WORKDIR_ON_FAILURE`` and ``$SAFESYNTH_QUARANTINE_DAYS``, else the defaults.

        Raises:
            SpecError: a value is not allowed (exit code 2, before anything is reserved).
        """
        on_failure = os.environ.get(ON_FAILURE_ENV) or "quarantine"
        if on_failure not in ("quarantine", "delete"):
            raise SpecError(f"`{ON_FAILURE_ENV}` ({on_failure!r}) must be 'quarantine' or 'delete'")
        raw = os.environ.get(QUARANTINE_DAYS_ENV) or "7"
        try:
            days = float(raw)
        except ValueError:
            days = math.nan
        if not (math.isfinite(days) and days >= 0):
            raise SpecError(f"`{QUARANTINE_DAYS_ENV}` ({raw!r}) must be a number of days >= 0")
        return cls(on_failure="delete" if on_failure == "delete" else "quarantine", days=days)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workspace:
    """One attempt's private directories. Small and picklable (it travels between Prefect tasks)."""

    workdir: str
    reports: str
    retention: Retention = field(default_factory=Retention)

    @classmethod
    def create(cls, dataset: str, release_id: str) -> Workspace:
        """Make fresh, owner-only directories for one attempt (after sweeping dead runs and expired
        quarantines).

        Raises:
            SpecError: the retention settings are not allowed (see :meth:`Retention.from_env`).
        """
        retention = Retention.from_env()
        home = safesynth_home()
        sweep_stale(home)
        sweep_quarantine(home)
        token = f"{int(time.time())}-{secrets.token_hex(4)}"
        workdir = home / "runs" / dataset / release_id / token
        reports = home / "reports" / dataset / release_id / token
        for path in (workdir, reports):
            _private_dirs(home, path)
        (workdir / OWNER_FILE).write_text(Owner.current().to_json())
        return cls(workdir=str(workdir), reports=str(reports), retention=retention)

    def path(self, name: str) -> Path:
        return Path(self.workdir) / name

    def report(self, name: str) -> Path:
        return Path(self.reports) / name

    def close(self) -> None:
        """Remove the work directory and everything in it (private rows, models); keep the reports."""
        _remove_run(Path(self.workdir))

    def finish(self, status: str, *, data_read: bool) -> Path | None:
        """End the attempt: quarantine the work directory of a blocked or failed release that read data
        (unless retention says ``delete``), else remove it. The reports stay either way.

        Returns:
            Where the directory was quarantined, or None when it was removed.
        """
        if status in KEPT_OUTCOMES and data_read and self.retention.on_failure == "quarantine":
            return self.quarantine(status)
        self.close()
        return None

    def quarantine(self, status: str) -> Path | None:
        """Move the work directory to ``$SAFESYNTH_HOME/quarantine/...`` until its retention expires.

        Falls back to removing it when it cannot be moved (fail closed: private rows are never left where
        nothing would sweep them).
        """
        workdir = Path(self.workdir)
        home = workdir.parents[3]  # <home>/runs/<dataset>/<release_id>/<token>
        target = home / "quarantine" / workdir.relative_to(home / "runs")
        now = dt.datetime.now(dt.UTC)
        marker = {"status": status, "quarantined_at": now.isoformat(timespec="seconds"),
                  "expires_at": (now + dt.timedelta(days=self.retention.days)).isoformat(timespec="seconds"),
                  "retention_days": self.retention.days}
        try:
            (workdir / QUARANTINE_FILE).write_text(json.dumps(marker))
            _private_dirs(home, target.parent)
            os.rename(workdir, target)
        except OSError as exc:
            log.warning("could not quarantine the work directory (%s); removing it", exc.__class__.__name__)
            self.close()
            return None
        _remove_run(workdir)  # only the emptied <release_id> and <dataset> parents are left to prune
        dataset, release_id = target.parent.parent.name, target.parent.name
        log.warning("release %s was %s after reading data: its private work directory is quarantined (restricted, "
                    "owner only) under $SAFESYNTH_HOME/quarantine/%s/%s/ for %g days (%s)", release_id, status,
                    dataset, release_id, self.retention.days, QUARANTINE_DAYS_ENV)
        return target


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
            owner = Owner.from_json(owner_file.read_text())
        except OSError:
            continue
        if owner is not None and owner.state() == "dead":
            _remove_run(owner_file.parent)
            removed += 1
    if removed:
        log.info("removed %d work director%s left by runs that died", removed, "y" if removed == 1 else "ies")
    return removed


def sweep_quarantine(home: Path | None = None, *, now: dt.datetime | None = None) -> int:
    """Remove quarantined work directories whose retention has expired. Returns how many were removed.

    A directory whose ``quarantine.json`` cannot be read counts as expired (private rows are never kept
    without a date to remove them by).
    """
    root = (home or safesynth_home()) / "quarantine"
    now = now or dt.datetime.now(dt.UTC)
    removed = 0
    for directory in root.glob("*/*/*") if root.is_dir() else ():
        if not directory.is_dir():
            continue
        try:
            marker = json.loads((directory / QUARANTINE_FILE).read_text())
            expired = dt.datetime.fromisoformat(marker["expires_at"]) <= now
        except (OSError, ValueError, KeyError, TypeError):
            expired = True
        if expired:
            _remove_run(directory)
            removed += 1
    if removed:
        log.info("removed %d quarantined work director%s past their retention", removed,
                 "y" if removed == 1 else "ies")
    return removed
