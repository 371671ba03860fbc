"""Release ids of scheduled slots and of flow runs: derived from public values, stable across re-runs."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from safesynth.flows.release import release_id_for

from safesynth.errors import SpecError
from safesynth.preflight import check_release_id
from safesynth.stages import slot_release_id

MONDAY_2AM_UTC = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
RUN_ID = "1b93fbf2-ede8-4bd0-84ba-61d1cee2a1fe"


def test_slot_release_id_names_the_utc_slot():
    assert slot_release_id("demo", MONDAY_2AM_UTC) == "demo-2026-12-07T02-00Z"
    berlin = dt.datetime(2026, 12, 7, 3, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # the same instant
    assert slot_release_id("demo", berlin) == "demo-2026-12-07T02-00Z"
    summer = dt.datetime(2026, 7, 6, 2, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # CEST: UTC+2
    assert slot_release_id("demo", summer) == "demo-2026-07-06T00-00Z"


def test_slot_release_id_keeps_seconds_and_drops_fractions():
    odd = MONDAY_2AM_UTC.replace(second=5, microsecond=123456)
    assert slot_release_id("demo", odd) == "demo-2026-12-07T02-00-05Z"
    assert slot_release_id("demo", odd.replace(microsecond=999999)) == slot_release_id("demo", odd)


def test_slot_release_ids_are_valid_release_ids():
    for dataset in ("demo", "a", "x" * 110, "adult_income.v2"):
        release_id = slot_release_id(dataset, MONDAY_2AM_UTC)
        assert check_release_id(release_id) == release_id


def test_slot_release_id_refuses_a_naive_time_or_an_overlong_id():
    with pytest.raises(SpecError, match="must have a time zone"):
        slot_release_id("demo", MONDAY_2AM_UTC.replace(tzinfo=None))
    with pytest.raises(SpecError, match="`release_id`"):
        slot_release_id("x" * 120, MONDAY_2AM_UTC)


def test_an_explicit_release_id_wins():
    assert release_id_for("demo", "r1", run_id=RUN_ID, scheduled=MONDAY_2AM_UTC, from_deployment=True) == "r1"


def test_a_deployment_run_takes_its_slot_id():
    assert release_id_for("demo", None, run_id=RUN_ID, scheduled=MONDAY_2AM_UTC,
                          from_deployment=True) == "demo-2026-12-07T02-00Z"
    # Another flow run of the same slot (a re-run) gets the same id: it finds the release published.
    other = "0f0f0f0f-0000-4000-8000-000000000000"
    assert release_id_for("demo", None, run_id=other, scheduled=MONDAY_2AM_UTC, from_deployment=True) == \
        "demo-2026-12-07T02-00Z"


def test_an_adhoc_flow_run_takes_an_id_of_its_own_stable_across_retries():
    adhoc = release_id_for("demo", None, run_id=RUN_ID, scheduled=MONDAY_2AM_UTC, from_deployment=False)
    assert adhoc == "demo-20261207T020000Z-1b93fb"
    assert check_release_id(adhoc) == adhoc
    assert release_id_for("demo", None, run_id=RUN_ID, scheduled=MONDAY_2AM_UTC, from_deployment=False) == adhoc


def test_outside_a_flow_run_the_id_is_left_to_run_release():
    assert release_id_for("demo", None, run_id=None, scheduled=None, from_deployment=False) is None
