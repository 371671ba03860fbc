"""Which event reports a release outcome, and what its payload may hold (no Prefect API needed)."""

from __future__ import annotations

from safesynth.flows.events import PAYLOAD_KEYS, internal_error_outcome, release_event

from safesynth.release import ReleaseOutcome

GATE = {"passed": True, "gates": [{"gate": "membership-auc", "passed": True, "figure": 0.61, "threshold": 0.65,
                                    "reason": "membership-auc: ... 0.610 <= threshold 0.650"}]}
PRIVACY = {"epsilon": 3.9, "delta": 1e-6, "accountant": "rdp", "epsilon_rdp": 3.9, "stages": [{"stage": "fit"}]}


def test_a_published_release_reports_figures_decisions_and_location_only():
    outcome = ReleaseOutcome(release_id="r1", dataset="demo", status="published", message="published 300 rows to x",
                             location="s3://bucket/demo/r1", privacy=PRIVACY, audit={"noisy_auc": 0.55}, gate=GATE)
    event = release_event(outcome)
    assert event is not None and event["event"] == "safesynth.release.published"
    assert event["resource"]["prefect.resource.id"] == "safesynth.dataset.demo"
    assert event["related"][0]["prefect.resource.id"] == "safesynth.release.demo.r1"
    assert set(event["payload"]) <= PAYLOAD_KEYS
    assert event["payload"]["gates"] == [{"gate": "membership-auc", "passed": True}]  # no figure, no reason
    assert (event["payload"]["epsilon"], event["payload"]["location"]) == (3.9, "s3://bucket/demo/r1")
    assert "stages" not in event["payload"] and "noisy_auc" not in str(event)


def test_an_already_published_release_emits_nothing():
    assert release_event(ReleaseOutcome(release_id="r1", dataset="demo", status="already_published",
                                        message="already")) is None


def test_an_unexpected_error_is_named_by_its_class_only():
    exc = RuntimeError("value 58.3 of column bmi")  # a bug's message could hold anything
    exc.release_id, exc.dataset = "r1", "demo"
    event = release_event(internal_error_outcome(exc))
    assert event is not None and event["event"] == "safesynth.release.failed"
    assert event["payload"]["message"] == "internal error (RuntimeError)" and "58.3" not in str(event)
    assert event["payload"]["exit_code"] == 1


def test_an_error_before_the_spec_loaded_has_no_release_resource():
    event = release_event(ReleaseOutcome(release_id="-", dataset="-", status="failed", message="bad spec",
                                         exit_code=2))
    assert event is not None and event["resource"]["prefect.resource.id"] == "safesynth.dataset.unknown"
    assert event["related"] == [] and event["payload"]["dataset"] is None
