"""The release flow's Prefect events, read back from the test API: published, blocked, failed.

Each event must carry published-zone fields only (flows/events.py): the keys of an allow-list, the figures
of the manifest and the gate decisions of the published summary, never a row count, an exact audit figure
or a path under $SAFESYNTH_HOME. The work directory of a blocked or failed release that read data is
quarantined owner-only; a published one leaves nothing private behind.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safesynth.flows.events import PAYLOAD_KEYS

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("shared_dask")]

ROWS = 600  # the true row count of the source: private, must appear in no event
EXACT_AUDIT_KEYS = {"members", "non_members", "tpr_at_low_fpr", "tpr_upper", "train_rows", "holdout_rows",
                    "slot_auc", "exact", "padded_members", "padded_non_members", "auc", "noisy_auc"}


def demo_spec(tmp_path: Path, source: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((REPO / "data" / "demo.yaml").read_text())
    data.update(source=str(source), publish={"target": str(tmp_path / "releases")},
                sampling={"rows": 300, "seed": 0}, audit={"holdout_fraction": 0.2, "max_attack_auc": 1.0})
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def release_events(*release_ids: str, wait: float = 30.0) -> dict[str, list]:
    """The safesynth events about each release id, as the Prefect API stored them (polled: storing is
    asynchronous), once every id has one or ``wait`` seconds have passed."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    ids = {f"safesynth.release.demo.{r}": r for r in release_ids}
    query = EventFilter(event=EventNameFilter(prefix=["safesynth."]), related=EventRelatedFilter(id=list(ids)))
    deadline = time.monotonic() + wait
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=query, limit=50).events
        found: dict[str, list] = {r: [] for r in release_ids}
        for event in events:
            for related in event.related:
                if related.id in ids:
                    found[ids[related.id]].append(event)
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def walk(value) -> list:
    if isinstance(value, dict):
        return [*value, *(x for v in value.values() for x in walk(v))]
    if isinstance(value, list):
        return [x for v in value for x in walk(v)]
    return [value]


def check_published_zone_only(event, home: Path) -> dict:
    payload = event.payload
    assert set(payload) <= PAYLOAD_KEYS, set(payload) - PAYLOAD_KEYS
    for gate in payload.get("gates", []):
        assert set(gate) == {"gate", "passed"}
    assert not set(map(str, walk(payload))) & EXACT_AUDIT_KEYS
    assert not {ROWS, int(ROWS * 0.8), int(ROWS * 0.2)} & {v for v in walk(payload) if isinstance(v, int)}
    assert str(home) not in event.model_dump_json()  # no restricted path (work dir, reports, quarantine)
    assert event.resource.id == "safesynth.dataset.demo"
    related = {r.id: r.role for r in event.related}
    assert related[f"safesynth.release.demo.{payload['release_id']}"] == "release"
    assert any(r.startswith("prefect.flow-run.") for r in related)  # Prefect links the flow run
    return payload


def quarantined(home: Path, release_id: str) -> list[Path]:
    root = home / "quarantine" / "demo" / release_id
    return sorted(root.iterdir()) if root.exists() else []


def test_published_blocked_and_failed_releases_emit_their_events(tmp_path, safesynth_home, prefect_harness):
    from safesynth.flows.release import release

    source = tmp_path / "demo.csv"
    pd.read_csv(REPO / "data" / "demo.csv", dtype=str, keep_default_na=False, nrows=ROWS).to_csv(source, index=False)

    published = release(str(demo_spec(tmp_path, source, "ok")), "ev-published", return_state=True)
    assert published.is_completed(), published.message
    # Blocked: a tiny audit share leaves the DP bound (near) vacuous, so 0.5 blocks in all but ~1e-4 of
    # runs (as in test_release_flow.py).
    spec = demo_spec(tmp_path, source, "blocked", audit={"max_attack_auc": 0.5},
                     privacy={"allocation": {"audit": 0.001}})
    blocked = release(str(spec), "ev-blocked", return_state=True)
    assert blocked.is_failed() and "membership-auc" in blocked.message
    # Failed after the budget was reserved and the source read: the same file, now malformed.
    source.write_bytes(source.read_bytes()[:2000] + b'\n"unterminated,1,2\n' + b"x" * 50)
    failed = release(str(demo_spec(tmp_path, source, "failed")), "ev-failed", return_state=True)
    assert failed.is_failed()
    events = release_events("ev-published", "ev-blocked", "ev-failed")

    # Published: the payload repeats the manifest's figures and gate decisions, and the location.
    [event] = events["ev-published"]
    payload = check_published_zone_only(event, safesynth_home)
    manifest = json.loads((tmp_path / "releases" / "demo" / "ev-published" / "manifest.json").read_text())
    assert event.event == "safesynth.release.published"
    assert (payload["status"], payload["exit_code"], payload["gates_passed"]) == ("published", 0, True)
    assert (payload["epsilon"], payload["delta"]) == (manifest["privacy"]["epsilon"], manifest["privacy"]["delta"])
    assert payload["accountant"] == manifest["privacy"]["accountant"]
    assert payload["gates"] == [{"gate": g["gate"], "passed": g["passed"]} for g in manifest["gate"]["gates"]]
    assert payload["location"] == f"{tmp_path / 'releases'}/demo/ev-published"

    # Blocked: the decisions are those of the published summary artifact (the outcome it renders).
    [event] = events["ev-blocked"]
    payload = check_published_zone_only(event, safesynth_home)
    outcome = blocked.result(raise_on_failure=False)
    assert event.event == "safesynth.release.blocked"
    assert (payload["status"], payload["exit_code"], payload["gates_passed"]) == ("blocked", 3, False)
    assert payload["gates"] == [{"gate": g["gate"], "passed": g["passed"]} for g in outcome.gate["gates"]]
    assert {"gate": "membership-auc", "passed": False} in payload["gates"]
    assert payload["epsilon"] == outcome.privacy["epsilon"] and payload["message"] == blocked.message
    assert "location" not in payload

    [event] = events["ev-failed"]
    payload = check_published_zone_only(event, safesynth_home)
    assert event.event == "safesynth.release.failed"
    assert (payload["status"], payload["exit_code"]) == ("failed", 2)
    assert payload["message"] == failed.message and "epsilon" not in payload and "gates" not in payload

    # Nothing was published but the first release; the other two work directories are quarantined.
    assert [p.parent.name for p in (tmp_path / "releases").rglob("manifest.json")] == ["ev-published"]
    assert not quarantined(safesynth_home, "ev-published")
    for release_id in ("ev-blocked", "ev-failed"):
        [attempt] = quarantined(safesynth_home, release_id)
        assert stat.S_IMODE(attempt.stat().st_mode) == 0o700
        assert json.loads((attempt / "quarantine.json").read_text())["status"] == release_id.removeprefix("ev-")
    runs = safesynth_home / "runs"
    assert not runs.exists() or not [p for p in runs.rglob("*") if p.is_file()]
