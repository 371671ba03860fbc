"""The budget follows the data, not its name: source keys, their bindings, and `safesynth budget rebind`."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from typer.testing import CliRunner

from flows.cli_budget import budget_app
from safesynth.errors import SourceMismatchError, SpecError
from safesynth.privacy.ledger import Ledger
from safesynth.privacy.planner import plan_budget
from safesynth.privacy.source_identity import SourceIdentity, alias_is_live, source_identity
from safesynth.spec import parse_spec
from tests.unit.privacy._ledger_helpers import reserve

# ------------------------------------------------------------------------------------------ keys


def test_local_key_is_the_real_path_with_device_and_inode(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n")
    (tmp_path / "link.csv").symlink_to(data)
    real = os.path.realpath(data)
    st = os.stat(data)
    for location in (str(data), str(tmp_path / "link.csv"), str(tmp_path / "sub" / ".." / "data.csv"),
                     f"file://{data}"):
        identity = source_identity(location)
        assert identity.key == f"file://{real}"
        assert identity.inode == f"{st.st_dev}:{st.st_ino}"
    assert source_identity(str(tmp_path / "missing.csv")).inode is None


@pytest.mark.parametrize(("location", "key"), [
    ("s3://AKIA:secret@bucket/a/data.csv?versionId=3#x", "s3://bucket/a/data.csv"),
    ("HTTPS://User:pw@Example.COM:8443/d.parquet?sig=abc", "https://example.com:8443/d.parquet"),
    ("gs://bucket/d.jsonl", "gs://bucket/d.jsonl"),
])
def test_url_key_drops_credentials_query_and_case_of_scheme_and_host(location, key):
    assert source_identity(location).key == key
    assert source_identity(key).key == key  # a key is its own normal form (what `rebind` is given)
    assert source_identity(location).inode is None


def test_a_recorded_inode_is_stale_once_its_path_holds_another_file(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n")
    identity = source_identity(str(data))
    assert alias_is_live(identity.key, identity.inode)
    replacement = tmp_path / "new.csv"
    replacement.write_text("x\n2\n")
    replacement.replace(data)  # an atomic refresh: same path, new inode
    assert not alias_is_live(identity.key, identity.inode)
    assert not alias_is_live("s3://bucket/data.csv", identity.inode)


# --------------------------------------------------------------------------------------- bindings


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("x\n1\n")
    return path


def test_renaming_the_dataset_does_not_reset_the_budget(ledger, data):
    reserve(ledger, "r1", dataset="adult", source=source_identity(str(data)))
    with pytest.raises(SourceMismatchError) as info:
        reserve(ledger, "r1", dataset="adult-v2", source=source_identity(str(data)))
    message = str(info.value)
    assert info.value.exit_code == 2 and isinstance(info.value, SpecError) and "\n" not in message
    assert message.startswith("`dataset` (adult-v2) must be `adult`: source file://")
    assert ledger.summary("adult-v2").releases == ()  # nothing reserved under the new name


def test_a_hard_link_under_another_path_is_the_same_source(ledger, data, tmp_path):
    reserve(ledger, "r1", dataset="adult", source=source_identity(str(data)))
    os.link(data, tmp_path / "alias.csv")
    with pytest.raises(SourceMismatchError, match=r"same file \(device and inode\) as the source of dataset `adult`"):
        reserve(ledger, "r1", dataset="other", source=source_identity(str(tmp_path / "alias.csv")))


def test_a_stale_inode_of_another_dataset_does_not_block(ledger, data, tmp_path):
    old = source_identity(str(data))
    reserve(ledger, "r1", dataset="adult", source=old)
    data.unlink()
    fresh = tmp_path / "fresh.csv"
    fresh.write_text("y\n")
    key = source_identity(str(fresh)).key
    # The file system may reuse the inode number of a deleted file for an unrelated one.
    reserve(ledger, "r1", dataset="other", source=SourceIdentity(key=key, inode=old.inode))
    assert ledger.summary("other").source_key == key


def test_a_dataset_bound_to_another_source_is_refused_until_the_operator_rebinds_it(ledger, data, tmp_path):
    reserve(ledger, "r1", dataset="adult", source=source_identity(str(data)))
    moved = tmp_path / "moved.csv"
    data.rename(moved)
    key = source_identity(str(moved)).key
    with pytest.raises(SourceMismatchError) as info:
        reserve(ledger, "r2", dataset="adult", source=source_identity(str(moved)))
    assert str(info.value).startswith(f"`source` ({key}) must be the source recorded for dataset `adult`")
    assert f"safesynth budget rebind adult --source-key {key}" in str(info.value)
    summary = ledger.rebind_source("adult", key)
    assert summary.source_key == key and len(summary.releases) == 1  # the spends stay
    reserve(ledger, "r2", dataset="adult", source=source_identity(str(moved)))


def test_a_source_refreshed_in_place_stays_the_same_source(ledger, data, tmp_path):
    reserve(ledger, "r1", dataset="adult", source=source_identity(str(data)))
    (tmp_path / "next.csv").write_text("x\n3\n")
    (tmp_path / "next.csv").replace(data)
    reserve(ledger, "r2", dataset="adult", source=source_identity(str(data)))
    os.link(data, tmp_path / "alias.csv")  # the new inode is now the recorded one
    with pytest.raises(SourceMismatchError, match="must be `adult`"):
        reserve(ledger, "r1", dataset="other", source=source_identity(str(tmp_path / "alias.csv")))


def test_rebinding_to_a_source_of_another_dataset_is_refused(ledger, data, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("y\n")
    reserve(ledger, "r1", dataset="adult", source=source_identity(str(data)))
    reserve(ledger, "r1", dataset="census", source=source_identity(str(other)))
    with pytest.raises(SourceMismatchError, match="it is the source of dataset `census`; rebind `census` first"):
        ledger.rebind_source("adult", str(other))


def test_reserve_for_spec_binds_the_spec_source(ledger, data, tmp_path):
    spec = parse_spec({
        "dataset": "toy", "source": "data.csv", "columns": {"x": {"type": "boolean"}},
        "privacy": {"epsilon": 1.0, "lifetime_epsilon": 2.0}, "sampling": {"rows": 10},
        "publish": {"target": "out"},
    }, base_dir=tmp_path)
    ledger.reserve_for_spec(spec, release_id="r1", plan=plan_budget(spec))
    assert ledger.summary("toy").source_key == f"file://{os.path.realpath(data)}"
    renamed = spec.model_copy(update={"dataset": "toy-renamed"})
    with pytest.raises(SourceMismatchError, match=r"`dataset` \(toy-renamed\) must be `toy`"):
        ledger.reserve_for_spec(renamed, release_id="r1", plan=plan_budget(renamed))


# ------------------------------------------------------------------------------ migration and CLI


def test_an_older_ledger_gets_the_source_columns(tmp_path, data):
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    with Ledger.open(url) as ledger:
        reserve(ledger, "r1")
    with sqlite3.connect(path) as conn:  # the 0.2 schema
        conn.execute("DROP INDEX uq_safesynth_dataset_source_key")
        conn.execute("ALTER TABLE safesynth_budget_datasets DROP COLUMN source_key")
        conn.execute("ALTER TABLE safesynth_budget_datasets DROP COLUMN source_inode")
    book = Ledger.open_existing(url)  # read-only: changes nothing
    assert book is not None
    with book:
        assert book.summary("adult").source_key is None
    with Ledger.open(url) as ledger:  # migrates; the old dataset binds on its next reservation
        reserve(ledger, "r2", source=source_identity(str(data)))
        assert ledger.summary("adult").source_key == source_identity(str(data)).key
    with sqlite3.connect(path) as conn:
        indexes = [row[1] for row in conn.execute("PRAGMA index_list(safesynth_budget_datasets)")]
    assert "uq_safesynth_dataset_source_key" in indexes


def test_cli_rebind_and_show(tmp_path, url, data):
    with Ledger.open(url) as ledger:
        reserve(ledger, "r1", source=source_identity(str(data)))
    runner = CliRunner()
    moved = tmp_path / "moved.csv"
    result = runner.invoke(budget_app, ["rebind", "adult", "--source-key", f"file://{moved}", "--ledger", url])
    assert result.exit_code == 0, result.output
    assert f"budget bound to source file://{os.path.realpath(moved)}" in result.output
    shown = runner.invoke(budget_app, ["show", "adult", "--ledger", url, "--json"])
    assert json.loads(shown.output)["source_key"] == f"file://{os.path.realpath(moved)}"
    refused = runner.invoke(budget_app, ["rebind", "nope", "--source-key", "s3://b/k", "--ledger", url])
    assert refused.exit_code == 1 and "no budget recorded for dataset `nope`" in refused.output
