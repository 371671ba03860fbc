"""The restricted zone on disk: one private work directory per release attempt, and who owns it.

Every attempt gets its own directory, ``$SAFESYNTH_HOME/runs/<dataset>/<release_id>/<attempt token>``
(mode 0700, owner only), so concurrent runs of one release id, or two datasets that happen to use the same
id, never share private files. The directory holds the private rows while a release runs; it is removed on
every exit path (:meth:`Workspace.close`), and a directory left by a process that died (``kill -9``, power
loss) is removed by the next run on the same host (:func:`sweep_stale`).

Exact diagnostics for the data owner (validation counts, attack figures, the plan and account) are kept in
``$SAFESYNTH_HOME/reports/<dataset>/<release_id>/<attempt token>/`` (mode 0700): restricted, never
published. Private rows never go there.

Liveness: see :class:`safesynth.owner.Owner` (a recycled pid does not keep a dead run "alive"; on another
host nothing can be known, and nothing is removed).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from safesynth.owner import Owner

__all__ = ["Workspace", "safesynth_home", "sweep_stale"]

log = logging.getLogger("safesynth")

OWNER_FILE = "owner.json"


def safesynth_home() -> Path:
    """``$SAFESYNTH_HOME`` (default ``./.safesynth``), absolute."""
    return Path(os.environ.get("SAFESYNTH_HOME", ".safesynth")).resolve()


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
        (workdir / OWNER_FILE).write_text(Owner.current().to_json())
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
            owner = Owner.from_json(owner_file.read_text())
        except OSError:
            continue
        if owner is not None and owner.state() == "dead":
            _remove_run(owner_file.parent)
            removed += 1
    if removed:
        log.info("removed %d work director%s left by runs that died", removed, "y" if removed == 1 else "ies")
    return removed
