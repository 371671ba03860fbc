from pathlib import Path

import pytest

from safesynth.errors import SpecError
from safesynth.privacy.planner import plan_budget
from safesynth.spec import load_spec

ISSUE_EXAMPLE = """\
dataset: adult                     # ledger key: the privacy budget is tracked per dataset
source: ../shared/data/adult.csv   # local path or fsspec URL; csv, parquet or jsonl
columns:                           # PUBLIC metadata, never derived from the private data
  age: {type: integer, min: 17, max: 90}
  workclass: {type: categorical, categories: [Private, Self-emp-not-inc], nullable: true}
  income: {type: categorical, categories: ["<=50K", ">50K"]}
  notes: {type: text, max_length: 300}          # also float, boolean, datetime
privacy: {epsilon: 4.0, delta: 1.0e-5, lifetime_epsilon: 16.0}
generator: {kind: marginals}       # the LLM generator adds kind: llm in its own issue
sampling: {rows: 1000, seed: 0}
audit: {holdout_fraction: 0.2, max_attack_auc: 0.6}
publish: {target: ./releases}      # local directory or fsspec URL (s3://...)
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_issue_example_loads_with_paths_relative_to_the_spec_file(tmp_path):
    spec = load_spec(write(tmp_path, ISSUE_EXAMPLE))
    assert spec.dataset == "adult"
    assert spec.source_uri == str((tmp_path / "../shared/data/adult.csv").resolve())
    assert spec.target_uri == str((tmp_path / "releases").resolve())
    assert spec.source_format == "csv"
    assert spec.columns["workclass"].nullable
    plan = plan_budget(spec)  # the DP audit's and the repairs count's default shares come out of the generator's
    assert [s.name for s in plan.stages] == ["repairs", "generator", "audit"]
    assert plan.stage("repairs").epsilon == pytest.approx(0.08)  # the default 2%
    assert plan.stage("generator").epsilon == pytest.approx(3.52)
    assert plan.stage("audit").epsilon == pytest.approx(0.4)
    assert spec.validation.on_invalid == "repair"


def test_unknown_key_names_the_key_path_and_file(tmp_path):
    path = write(tmp_path, ISSUE_EXAMPLE.replace("min: 17", "minimum: 17"))
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert str(path) in msg and "`columns.age.minimum`: unknown key" in msg


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("epsilon: 4.0", "epsilon: -1", "privacy.epsilon"),
        ("min: 17, max: 90", "min: 90, max: 17", "columns.age"),
        ("type: integer", "type: int", "columns.age"),
        ("epsilon: 4.0", "epsilon: .nan", "privacy.epsilon"),
        ("lifetime_epsilon: 16.0", "lifetime_epsilon: .inf", "privacy.lifetime_epsilon"),
        ("lifetime_epsilon: 16.0", "lifetime_epsilon: 1.0", "privacy"),
        ("max_attack_auc: 0.6", "max_attack_auc: 1.5", "audit.max_attack_auc"),
        ("lifetime_epsilon: 16.0}", "lifetime_epsilon: 16.0, allocation: {audit: 0}}", "privacy.allocation.audit"),
        ("lifetime_epsilon: 16.0}", "lifetime_epsilon: 16.0, allocation: {generator: 0.95}}", "privacy.allocation"),
    ],
)
def test_bad_values_are_rejected_with_the_key(tmp_path, old, new, key):
    with pytest.raises(SpecError, match=f"`{key}"):
        load_spec(write(tmp_path, ISSUE_EXAMPLE.replace(old, new)))


def test_undeclared_domain_without_discovery_budget_is_rejected(tmp_path):
    text = ISSUE_EXAMPLE.replace("categories: [Private, Self-emp-not-inc], ", "")
    with pytest.raises(SpecError, match="no declared domain.*privacy.allocation.discovery"):
        load_spec(write(tmp_path, text))
    ok = text.replace("lifetime_epsilon: 16.0}", "lifetime_epsilon: 16.0, allocation: {discovery: 0.1}}")
    plan = plan_budget(load_spec(write(tmp_path, ok)))
    assert plan.stage("discovery").epsilon == pytest.approx(0.4)
    assert plan.stage("generator").epsilon == pytest.approx(3.12)  # 1 - discovery 0.1 - repairs 0.02 - audit 0.1


@pytest.mark.parametrize(
    ("allocation", "repairs", "generator"),
    [({"repairs": 0.05}, 0.05, 0.85), ({"repairs": 0.0}, None, 0.9), ({"generator": 0.9}, None, 0.9),
     ({"generator": 0.89}, 0.01, 0.89), ({"generator": 0.5}, 0.02, 0.5)],
)
def test_repairs_share_comes_from_the_generator_default_and_never_overdraws(tmp_path, allocation, repairs,
                                                                            generator):
    text = ISSUE_EXAMPLE.replace("lifetime_epsilon: 16.0}", f"lifetime_epsilon: 16.0, allocation: {allocation}}}")
    plan = plan_budget(load_spec(write(tmp_path, text)))
    assert plan.has("repairs") == (repairs is not None)
    if repairs is not None:
        assert plan.stage("repairs").fraction == pytest.approx(repairs)
    assert plan.stage("generator").fraction == pytest.approx(generator)
    assert sum(s.fraction for s in plan.stages) <= 1.0 + 1e-12


def test_reserved_column_names_are_refused(tmp_path):
    text = ISSUE_EXAMPLE.replace("  income:", "  __safesynth_repaired: {type: boolean}\n  income:")
    with pytest.raises(SpecError, match="reserved"):
        load_spec(write(tmp_path, text))


def test_validation_policy_is_checked(tmp_path):
    with pytest.raises(SpecError, match="validation.on_invalid"):
        load_spec(write(tmp_path, ISSUE_EXAMPLE + "validation: {on_invalid: ignore}\n"))
    assert load_spec(write(tmp_path, ISSUE_EXAMPLE + "validation: {on_invalid: fail}\n")).validation.on_invalid == "fail"


def test_missing_file_and_bad_yaml_are_one_line_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not valid YAML at line 3"):
        load_spec(write(tmp_path, "dataset: a\ncolumns: [\n"))


def test_digest_is_stable_and_tracks_content(tmp_path):
    a = load_spec(write(tmp_path, ISSUE_EXAMPLE)).digest()
    assert a == load_spec(write(tmp_path, ISSUE_EXAMPLE)).digest()
    assert a != load_spec(write(tmp_path, ISSUE_EXAMPLE.replace("rows: 1000", "rows: 1001"))).digest()


def test_spec_is_frozen(tmp_path):
    spec = load_spec(write(tmp_path, ISSUE_EXAMPLE))
    with pytest.raises(Exception, match="frozen"):
        spec.dataset = "other"  # type: ignore[misc]


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    with pytest.raises(SpecError, match="aliases"):
        load_spec(write(tmp_path, ISSUE_EXAMPLE + "source_options:\n  x: " + bomb.replace("\n", "\n  ")))


def test_the_removed_tpr_gate_is_refused_with_its_reason(tmp_path):
    text = ISSUE_EXAMPLE.replace("max_attack_auc: 0.6}", "max_attack_auc: 0.6, max_tpr_at_low_fpr: 0.1}")
    with pytest.raises(SpecError, match="`audit`: `max_tpr_at_low_fpr` was removed: .*no small sensitivity"):
        load_spec(write(tmp_path, text))


def test_audit_share_is_planned_and_the_stages_fit_the_release(tmp_path):
    text = ISSUE_EXAMPLE.replace("lifetime_epsilon: 16.0}", "lifetime_epsilon: 16.0, allocation: {audit: 0.05}}")
    plan = plan_budget(load_spec(write(tmp_path, text)))
    assert plan.stage("audit").epsilon == pytest.approx(0.2)
    assert plan.stage("generator").epsilon == pytest.approx(3.72)  # less the repairs count's default 2%
    assert sum(s.epsilon for s in plan.stages) <= 4.0 + 1e-12


@pytest.mark.parametrize(
    ("publish", "message"),
    [
        ("{format: parquet, target: ./r}", "`publish.format`: `format` ('parquet') must be one of"),
        ("{format: iceberg, target: ./wh}", "format iceberg needs `catalog`"),
        ("{format: iceberg, target: ./wh, catalog: 'sqlite:///c.db', table: synth}", "must be namespace.name"),
        ("{format: iceberg, target: ./wh, catalog: c.db, table: a.b}", "must be a SQLAlchemy URL"),
        ("{format: delta, target: ./t, table: a.b}", "`table` apply to format iceberg only"),
        ("{target: ./r, catalog: 'sqlite:///c.db'}", "`catalog` apply to format iceberg only"),
        ("{format: delta, target: ./t, rows_per_file: 10}", "`rows_per_file` applies to format files only"),
    ],
)
def test_publish_format_and_its_fields_are_checked_at_load(tmp_path, publish, message):
    with pytest.raises(SpecError, match="publish") as exc:
        load_spec(write(tmp_path, ISSUE_EXAMPLE.replace("{target: ./releases}", publish)))
    assert message in str(exc.value)


def test_lakehouse_formats_load_and_files_digests_are_unchanged(tmp_path):
    files = load_spec(write(tmp_path, ISSUE_EXAMPLE))
    explicit = load_spec(write(tmp_path, ISSUE_EXAMPLE.replace("{target: ./releases}",
                                                                "{format: files, target: ./releases}")))
    assert files.publish.format == "files" and explicit.digest() == files.digest()
    # The digest this spec had before `publish.format` existed (ledger records and manifests keep matching).
    assert files.digest() == "7a8af57c677328ec5869581e6641fbca363e46169815c47954fadd2dae8f115b"
    iceberg = load_spec(write(tmp_path, ISSUE_EXAMPLE.replace(
        "{target: ./releases}", "{format: iceberg, target: ./wh, catalog: 'sqlite:///cat.db', table: rel.adult}")))
    assert (iceberg.publish.table, iceberg.digest() != files.digest()) == ("rel.adult", True)
    delta = load_spec(write(tmp_path, ISSUE_EXAMPLE.replace("{target: ./releases}", "{format: delta, target: ./t}")))
    assert delta.target_uri == str((tmp_path / "t").resolve())
