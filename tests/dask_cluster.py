"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes on loopback.

Also :class:`KillShard`, a worker plugin that SIGKILLs the worker process as a chosen shard starts
executing there: the way a worker dies to the OOM killer or a lost node, without touching safesynth's code.
Workers import this module (cwd and PYTHONPATH are the repository root).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

REPO = Path(__file__).resolve().parents[1]


class KillShard(WorkerPlugin):
    """SIGKILL the worker when a task whose key ends with ``suffix`` starts executing.

    With ``marker`` the kill happens once (the marker file records it, across worker restarts); without it,
    on every attempt (a shard that keeps killing workers).
    """

    name = "test-kill-shard"

    def __init__(self, suffix: str, marker: str | None = None) -> None:
        self.suffix, self.marker = suffix, marker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or not str(key).endswith(self.suffix):
            return
        if self.marker is not None:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAFESYNTH_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
           **(extra or {})}
    return env


@contextmanager
def dask_cluster(tmp: Path, *, workers: int = 2, resources: str | None = None,
                 config: dict[str, str] | None = None, start_timeout: float = 120.0):
    """Start ``dask scheduler`` and ``workers`` ``dask worker`` processes; yield the scheduler address.

    ``config``: extra ``DASK_...`` environment variables for every process (e.g. allowed-failures).
    Everything is stopped (and reaped) on exit.
    """
    scheduler_file = tmp / "scheduler.json"
    env = _env(config)
    logs = tmp / "dask-logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=(logs / "scheduler.log").open("wb"),
            start_new_session=True))
        deadline = time.monotonic() + start_timeout
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start: " + (logs / "scheduler.log").read_text()[-2000:])
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(workers):
            cmd = [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--nworkers", "1",
                   "--memory-limit", "3GiB", "--name", f"w{i}", "--local-directory", str(tmp / f"w{i}")]
            if resources:
                cmd += ["--resources", resources]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                          stderr=(logs / f"worker{i}.log").open("wb"), start_new_session=True))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=start_timeout)
        yield address
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group (workers before the scheduler), SIGKILL what is left after 5 s."""
    for proc in reversed(procs):
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)  # the nannies' worker processes too
        proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
