"""`safesynth releases list|show`: what was published, with its epsilon, for every format."""

from __future__ import annotations

import json

import pytest
from safesynth.flows.cli_releases import releases_app
from typer.testing import CliRunner

from safesynth.publishers import PublishTarget, create_publisher
from tests.unit.test_publishers import make_part, manifest

runner = CliRunner()


def publish_two(tmp_path, fmt: str) -> list[str]:
    """Publish r1 and r2; return the CLI arguments that name the target."""
    if fmt == "iceberg":
        target = PublishTarget(format=fmt, target=str(tmp_path / "wh"), catalog=f"sqlite:///{tmp_path}/cat.db",
                               table="rel.synth")
        args = [str(tmp_path / "wh"), "ds", "--format", fmt, "--catalog", target.catalog, "--table", "rel.synth"]
    else:
        target = PublishTarget(format=fmt, target=str(tmp_path / "t"))
        args = [str(tmp_path / "t"), "ds", "--format", fmt]
    publisher = create_publisher(target)
    publisher.publish(make_part(tmp_path, "a", [1]), manifest("r1", day=1), dataset="ds", release_id="r1")
    publisher.publish(make_part(tmp_path, "b", [2]), manifest("r2", day=2, epsilon=0.25), dataset="ds",
                      release_id="r2")
    return args


@pytest.mark.parametrize("fmt", ["files", "delta", "iceberg"])
def test_list_prints_every_release_with_its_epsilon_and_marks_the_latest(tmp_path, fmt):
    args = publish_two(tmp_path, fmt)
    result = runner.invoke(releases_app, ["list", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "r1" in result.output and "r2 (latest)" in result.output and "0.25" in result.output
    data = json.loads(runner.invoke(releases_app, ["list", *args, "--json"]).output)
    assert data["latest"] == "r2"
    assert [(r["release_id"], r["epsilon"]) for r in data["releases"]] == [("r1", 1.0), ("r2", 0.25)]
    if fmt == "files":
        assert data["releases"][0]["files"] == ["part-00000.parquet"]
    else:
        assert data["releases"][0]["version"] is not None and data["releases"][0]["files"] == []


def test_show_prints_latest_by_default_or_one_release_and_fails_cleanly_for_unknown_ids(tmp_path):
    args = publish_two(tmp_path, "delta")
    shown = json.loads(runner.invoke(releases_app, ["show", *args[:2], "--format", "delta", "--json"]).output)
    assert (shown["release_id"], shown["epsilon"], shown["manifest"]["spec_digest"]) == ("r2", 0.25, "ab" * 32)
    one = runner.invoke(releases_app, ["show", args[0], "ds", "r1", "--format", "delta"], env={"COLUMNS": "200"})
    assert one.exit_code == 0 and "r1" in one.output and "version 0" in one.output
    missing = runner.invoke(releases_app, ["show", args[0], "ds", "r9", "--format", "delta"])
    assert missing.exit_code == 1 and "`r9` of dataset `ds` is not published" in missing.output
    assert "Traceback" not in missing.output


def test_list_of_an_empty_target_and_a_bad_format_are_one_line(tmp_path):
    empty = runner.invoke(releases_app, ["list", str(tmp_path), "ds"], env={"COLUMNS": "200"})
    assert empty.exit_code == 0 and "(none)" in empty.output
    bad = runner.invoke(releases_app, ["list", str(tmp_path), "ds", "--format", "csv"])
    assert bad.exit_code == 2 and "must be one of" in bad.output
    assert runner.invoke(releases_app, ["show", str(tmp_path), "ds"]).exit_code == 1
