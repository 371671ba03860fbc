"""A real Prefect server and process worker for tests: ``prefect server start`` and ``prefect worker start``.

The server keeps its SQLite database in the given directory and listens on a free loopback port; the
worker polls one process work pool every second. Both run in their own process groups and are stopped,
with everything they started (flow-run processes), on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.dask_cluster import _stop

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of every process a test starts: its own Prefect home and database, this checkout."""
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "PREFECT_HOME": str(home),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "SAFESYNTH_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


@contextmanager
def prefect_server(home: Path, *, pools: tuple[str, ...] = (), start_timeout: float = 120.0) -> Iterator[str]:
    """Start a Prefect server (and one process worker per pool in ``pools``); yield its API URL.

    The workers start after the server answers; a pool that does not exist yet is created by its worker.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home, env=server_env(home), stdout=(logs / "server.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True))
        _wait_healthy(api_url, procs[0], logs / "server.log", start_timeout)
        for pool in pools:
            procs.append(subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"],
                cwd=home, env=server_env(home, api_url), stdout=(logs / f"worker-{pool}.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True))
        yield api_url
    finally:
        _stop(procs)


def _wait_healthy(api_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("prefect server did not start: " + log.read_text()[-2000:])
        time.sleep(0.5)
