"""`safesynth deploy` against a Prefect API, and the dataset's one-slot concurrency limit."""

from __future__ import annotations

from pathlib import Path

import pytest

# Imported before CliRunner swaps the streams: importing Prefect's worker module sets up Prefect's log
# handlers, which must hold the real stderr (they log after the invocation's streams are closed).
import safesynth.deployments.release  # noqa: F401
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from safesynth.flows.cli import app
from safesynth.flows.limits import ensure_limit, limit_name, one_release_at_a_time, slot_wait_seconds
from typer.testing import CliRunner

from safesynth.errors import SafeSynthError, SpecError
from tests.conftest import REPO

# Slow: the Prefect API harness takes ~10-20 s to start (once per session).
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def demo_spec(tmp_path: Path, dataset: str = "demo") -> Path:
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data["dataset"] = dataset
    data["source"] = str(REPO / "data" / "demo.csv")
    data["publish"] = {"target": str(tmp_path / "releases")}
    out = tmp_path / f"{dataset}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def deploy(*args: str):
    return CliRunner().invoke(app, ["deploy", *args], catch_exceptions=False)


def test_deploy_registers_the_spec_on_a_schedule(tmp_path, safesynth_home, prefect_harness):
    spec = demo_spec(tmp_path, "demo-deploy")
    result = deploy(str(spec), "--cron", "0 2 * * 1", "--timezone", "Europe/Berlin", "--pool", "test-pool")
    assert result.exit_code == 0, result.output
    assert "safesynth-release/demo-deploy" in result.output
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("safesynth-release/demo-deploy")
        assert deployment.parameters == {"spec_path": str(spec.resolve())}  # the only parameter
        assert deployment.entrypoint == "safesynth.flows.release.release"  # the installed package
        assert deployment.work_pool_name == "test-pool"
        (schedule,) = deployment.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == \
            ("0 2 * * 1", "Europe/Berlin", True)
        assert deployment.job_variables["env"]["SAFESYNTH_HOME"] == str(safesynth_home.resolve())
        assert client.read_work_pool("test-pool").type == "process"  # created by deploy
        limit = client.read_global_concurrency_limit_by_name("safesynth-demo-deploy")
        assert (limit.limit, limit.active) == (1, True)
    # Deploying again updates the same deployment: still one schedule, now the new one.
    again = deploy(str(spec), "--cron", "30 3 * * *", "--pool", "test-pool")
    assert again.exit_code == 0, again.output
    with get_client(sync_client=True) as client:
        updated = client.read_deployment_by_name("safesynth-release/demo-deploy")
        assert updated.id == deployment.id
        assert [(s.schedule.cron, s.schedule.timezone) for s in updated.schedules] == [("30 3 * * *", "UTC")]


def test_deploy_refuses_a_bad_schedule_or_spec_and_deploys_nothing(tmp_path, safesynth_home, prefect_harness):
    spec = demo_spec(tmp_path, "demo-refused")
    bad_cron = deploy(str(spec), "--cron", "61 * * * *", "--pool", "test-pool")
    assert bad_cron.exit_code == 2 and "`--cron` ('61 * * * *')" in bad_cron.output
    bad_zone = deploy(str(spec), "--timezone", "Mars/Olympus_Mons", "--pool", "test-pool")
    assert bad_zone.exit_code == 2 and "Mars/Olympus_Mons" in bad_zone.output
    data = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({**data, "source": str(tmp_path / "missing.csv")}))
    missing = deploy(str(spec), "--pool", "test-pool")
    assert missing.exit_code == 2, missing.output
    with get_client(sync_client=True) as client:
        with pytest.raises(ObjectNotFound):
            client.read_deployment_by_name("safesynth-release/demo-refused")


def test_deploy_needs_a_server(tmp_path, safesynth_home, prefect_harness):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = deploy(str(demo_spec(tmp_path)))
    assert result.exit_code == 1 and "needs a Prefect server" in result.output


def test_the_dataset_limit_exists_with_one_slot(prefect_harness):
    name = limit_name("demo-limit")
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        assert ensure_limit("demo-limit") == name  # created
        assert client.read_global_concurrency_limit_by_name(name).limit == 1
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=5, active=False))
        ensure_limit("demo-limit")  # put back: one release of a dataset at a time
        limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active) == (1, True)


def test_a_second_release_of_the_dataset_waits_for_the_slot(prefect_harness, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_SLOT_WAIT_SECONDS", "2")
    with one_release_at_a_time("demo-busy"):
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name("safesynth-demo-busy").active_slots == 1
        with pytest.raises(SafeSynthError, match=r"held its slot for 2 s .*--active-slots 0"):
            with one_release_at_a_time("demo-busy"):
                pass
        with one_release_at_a_time("demo-other"):  # another dataset does not wait
            pass
    with concurrency("safesynth-demo-busy", strict=True, timeout_seconds=10):  # free again
        pass


def test_a_timeout_inside_the_release_is_not_a_busy_slot(prefect_harness):
    with pytest.raises(TimeoutError, match="the release's own"), one_release_at_a_time("demo-own-timeout"):
        raise TimeoutError("the release's own")


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "inf", "nan"])
def test_the_slot_wait_must_be_positive_seconds(raw, monkeypatch):
    monkeypatch.setenv("SAFESYNTH_SLOT_WAIT_SECONDS", raw)
    with pytest.raises(SpecError, match="SAFESYNTH_SLOT_WAIT_SECONDS"):
        slot_wait_seconds()


def test_a_flow_run_of_a_bad_spec_fails_in_one_line_and_is_named_after_the_file(tmp_path, prefect_harness):
    from safesynth.flows.release import release

    state = release(str(tmp_path / "weekly.yaml"), return_state=True)
    assert state.is_failed() and state.message.endswith("spec file not found")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).name == "weekly-invalid-spec"


def test_serve_needs_a_server(tmp_path, safesynth_home, prefect_harness):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["serve", str(demo_spec(tmp_path))], catch_exceptions=False)
    assert result.exit_code == 1 and "no scheduler" in result.output
