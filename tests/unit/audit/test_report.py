"""The owner's audit report: every figure present and decodable, aggregates only, byte-identical rewrites."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from safesynth.audit.attacks.confidence import evaluation_result
from safesynth.audit.report import AuditReport, build_report, marginal_comparison, write_report
from tests.helpers import MIXED_COLUMNS, make_spec, mixed_frame

SECRET_TEXT = "zq-SECRET-4711-xv"
SECRET_CATEGORY = "zz-undeclared-plan-93"
PNG = b"\x89PNG\r\n\x1a\n"


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


COLUMNS = ("age", "plan", "active", "note")  # integer, categorical, boolean, text: few figures, fast tests


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[AuditReport, str, str]:
    """The full report, written once (rendering a dozen figures takes a few seconds on a busy machine)."""
    tmp_path = tmp_path_factory.mktemp("report")
    spec = make_spec(tmp_path, columns={c: MIXED_COLUMNS[c] for c in COLUMNS})
    train, holdout, synthetic = (mixed_frame(120, seed=s)[list(COLUMNS)] for s in (1, 2, 3))
    for frame in (train, synthetic):  # a planted secret text and an undeclared category on both sides
        frame.loc[5, "note"] = SECRET_TEXT
        frame.loc[7, "plan"] = SECRET_CATEGORY
    rng = np.random.default_rng(0)
    scores = {"domias": (rng.normal(0.2, 1, 120), rng.normal(0, 1, 120))}
    risk = evaluation_result(attack="inference:plan", n_attacks=50, n_success=20, n_control=50,
                             n_control_success=15, n_baseline_success=10)
    report = build_report(spec=spec, train=train, holdout=holdout, synthetic=synthetic, epsilon=2.0, delta=1e-6,
                          rng=np.random.default_rng(1), attack_scores=scores, risks=[risk], target="active",
                          positive="True", empirical_epsilon=0.4)
    html_path, json_path = write_report(report, tmp_path / "reports")
    return report, html_path.read_text(), json_path.read_text()


def test_report_embeds_every_figure_as_a_png_and_the_json_holds_the_summaries(written):
    report, page, text = written
    pngs = images(page)
    # epsilon + ROC + risks + TSTR + 2-way heat map + one marginal per declared column
    assert page.count('<img src="data:image/png;base64,') == len(pngs) == 1 + 1 + 1 + 1 + 1 + len(COLUMNS)
    assert all(p.startswith(PNG) for p in pngs)
    assert not re.search(r"<script|<link|https?://", page)  # self-contained
    data = json.loads(text)
    assert [a["attack"] for a in data["attacks"]] == ["domias"]
    assert data["attacks"][0]["auc"] == pytest.approx(report.attacks[0].summary.auc)
    assert set(data["attacks"][0]["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert data["risks"][0]["attack"] == "inference:plan" and data["tstr"]["trtr_roc_auc"] > 0
    assert data["auc_bound"] == pytest.approx(np.exp(2) / (1 + np.exp(2)), abs=1e-5)
    assert data["empirical_epsilon"] == 0.4 and data["warnings"] == []
    assert [m["column"] for m in data["marginals"]] == list(COLUMNS)


def test_report_never_shows_a_record(written):
    _, page, text = written
    prose = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 spells any short word
    for content in (page, text):
        assert SECRET_TEXT not in content and SECRET_CATEGORY not in content
    for content in (prose, text):
        assert "love" not in content and "good" not in content  # words of the text column
    data = json.loads(text)
    plan = next(m for m in data["marginals"] if m["column"] == "plan")
    assert plan["labels"][:3] == ["basic", "plus", "pro"] and "<other>" in plan["labels"]  # counted, unnamed
    note = next(m for m in data["marginals"] if m["column"] == "note")
    assert note["kind"] == "text length" and all(re.fullmatch(r"\[\d+, \d+\)|<null>", x) for x in note["labels"])


def test_two_writes_of_the_same_report_are_byte_identical(written, tmp_path):
    report, page, text = written
    html_path, json_path = write_report(report, tmp_path)
    assert html_path.read_text() == page and json_path.read_text() == text
    assert html_path.read_bytes() == page.encode() and json_path.read_bytes() == text.encode()


def test_report_with_a_subset_of_sections(tmp_path):
    spec = make_spec(tmp_path, columns={"age": {"type": "integer", "min": 0, "max": 100},
                                        "plan": {"type": "categorical", "categories": ["a", "b"]}})
    train = pd.DataFrame({"age": pd.array([20, 30, 40, 50], "Int64"), "plan": ["a", "b", "a", "b"]})
    report = build_report(spec=spec, train=train, holdout=train, synthetic=train.iloc[::-1], epsilon=1.0,
                          delta=0.0, rng=np.random.default_rng(0))
    html_path, json_path = write_report(report, tmp_path / "r")
    page = html_path.read_text()
    assert len(images(page)) == 1 + 1 + 2  # epsilon, heat map, two marginals: no ROC, risk or TSTR figure
    assert "TSTR" not in page and "Membership attacks" not in page and "not measured" in page
    data = json.loads(json_path.read_text())
    assert data["tstr"] is None and data["attacks"] == [] and data["empirical_epsilon"] is None
    assert data["tvd"]["tvd_1way"] == 0.0


def test_report_warns_when_the_empirical_epsilon_exceeds_the_claim(tmp_path):
    report = AuditReport(dataset="d", epsilon=1.0, delta=0.0, empirical_epsilon=1.5)
    html_path, json_path = write_report(report, tmp_path)
    assert len(images(html_path.read_text())) == 1
    assert "must not exceed" in json.loads(json_path.read_text())["warnings"][0]


def test_marginals_use_declared_bins_and_match_the_utility_tvd(tmp_path):
    spec = make_spec(tmp_path, columns={"x": {"type": "integer", "min": 0, "max": 3, "nullable": True},
                                        "y": {"type": "float", "min": 0, "max": 10}})
    real = pd.Series(pd.array([0, 1, 1, None], "Int64"))
    synthetic = pd.Series(pd.array([0, 3, 3, 3], "Int64"))
    m = marginal_comparison(real, synthetic, spec.columns["x"], column="x")
    assert m.labels == ("0", "1", "2", "3", "<null>")
    assert m.real == (0.25, 0.5, 0.0, 0.0, 0.25) and m.synthetic == (0.25, 0.0, 0.0, 0.75, 0.0)
    assert m.tvd == pytest.approx(0.75)
    y = marginal_comparison(pd.Series([0.5, 9.9, 12.0]), pd.Series([0.1, 0.2, 0.3]), spec.columns["y"], column="y",
                            bins=4)
    assert y.labels == ("[0, 2.5)", "[2.5, 5)", "[5, 7.5)", "[7.5, 10)") and y.real[-1] == pytest.approx(2 / 3)
