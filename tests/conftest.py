"""Test-wide isolation: every run gets its own SAFESYNTH_HOME, Prefect home and HF cache (nothing in $HOME)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="safesynth-tests-"))
# Set before Prefect or transformers are imported by any test module.
os.environ["SAFESYNTH_HOME"] = str(_HOME)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "safesynth"
# The local engine logs through the same logger outside any flow run.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ["HF_HOME"] = str(_HOME / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One OpenMP thread per process: the suite runs CLI subprocesses, Dask workers and servers beside the test
# process on 2 CI cores, and OpenMP's spinning threads (sklearn's HistGradientBoosting in the audit, torch)
# slow down ~6x when a core is shared (3 fits of 1,500 rows: 1.9 s against 0.3 s beside one busy process).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SAFESYNTH_TORCH_THREADS", "1")

# Property tests are derandomised (same examples every run: no unseeded randomised asserts) and not
# timed: a loaded 2-core CI machine must not turn a slow example into a failure.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("safesynth", derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("safesynth")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for all flow tests; starting it costs ~10 s."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the session: ``$SAFESYNTH_TEST_POSTGRES_URL``, else one started here.

    Skips only where no server can be started (no PostgreSQL binaries); CI's machines have them.
    """
    pytest.importorskip("psycopg")
    given = os.environ.get("SAFESYNTH_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    from tests.postgres_server import available, postgres_server

    reason = available()
    if reason is not None:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint (``moto_server`` in its own process) with the bucket ``releases``; see tests/s3.py."""
    from tests.s3 import moto_server

    try:
        with moto_server() as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    """The CLI logs to the stderr of its invocation; CliRunner closes that stream afterwards, so a handler
    left on the ``safesynth`` logger would print 'Logging error' tracebacks in later tests."""
    yield
    import logging

    ours = logging.getLogger("safesynth")
    for handler in [h for h in ours.handlers if getattr(h, "_safesynth_cli", False)]:
        ours.removeHandler(handler)


@pytest.fixture
def safesynth_home(tmp_path, monkeypatch) -> Path:
    """A fresh SAFESYNTH_HOME (ledger, work directories) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("SAFESYNTH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def _release_cluster(tmp_path_factory):
    """The cluster behind :func:`shared_dask`, started once per session: a ``dask scheduler`` and one
    ``dask worker`` process (one thread, one torch thread).

    Not a LocalCluster: its scheduler would run in this process for the whole session, and its threads'
    use of the global ``random`` module during a Hypothesis draw makes Hypothesis fail the test as flaky
    (seen in CI).
    """
    from tests.dask_cluster import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("release-dask"), workers=1) as address:
        yield address


@pytest.fixture(scope="module")
def shared_dask(_release_cluster):
    """One real Dask cluster for modules that run many releases, reached as an existing scheduler.

    Those releases still sample on Dask (through ``SAFESYNTH_DASK_SCHEDULER``, set for the requesting
    module only); only the cluster's start-up (seconds per release on 2 cores) is shared. Starting a
    LocalCluster per release is tested where it is the subject (tests/e2e/test_release_flow.py,
    tests/integration/test_distributed_sampling.py), which must not see this variable.
    """
    before = os.environ.get("SAFESYNTH_DASK_SCHEDULER")
    os.environ["SAFESYNTH_DASK_SCHEDULER"] = _release_cluster
    try:
        yield _release_cluster
    finally:
        if before is None:
            os.environ.pop("SAFESYNTH_DASK_SCHEDULER", None)
        else:
            os.environ["SAFESYNTH_DASK_SCHEDULER"] = before


# ------------------------------------------------------------------ mypy, started early in the background

MYPY_TEST = "tests/unit/test_typing.py::test_core_passes_mypy_strict"
_MYPY: dict[str, object] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the whole suite runs, start mypy now at a low priority; its test collects the result.

    A cold mypy --strict run takes ~2 min of one core; spent in the gaps the suite leaves (servers starting,
    subprocesses waiting) it no longer adds ~2 min to the suite's wall time. A lone run of the test (or
    any selection of fewer than 50 tests) runs mypy in the test itself. A thread reads its output and
    reaps it as soon as it exits: no zombie child of the test process is left for tests that list children.
    """
    if len(session.items) < 50 or not any(item.nodeid == MYPY_TEST for item in session.items):
        return
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "mypy", "safesynth"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: os.nice(10))

    def collect() -> None:
        output, _ = proc.communicate()
        _MYPY["result"] = (output, proc.returncode)

    waiter = threading.Thread(target=collect, name="mypy-background", daemon=True)
    waiter.start()
    _MYPY.update(proc=proc, waiter=waiter)


def background_mypy() -> tuple[str, int] | None:
    """The early mypy run's (output, exit status), waiting for it; None when none was started."""
    import threading

    waiter = _MYPY.get("waiter")
    if not isinstance(waiter, threading.Thread):
        return None
    waiter.join()
    result = _MYPY.pop("result", None)
    return result if isinstance(result, tuple) else None


def pytest_sessionfinish(session: pytest.Session) -> None:
    import subprocess

    proc = _MYPY.pop("proc", None)
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:  # its test was not reached
        proc.kill()
        proc.wait()
