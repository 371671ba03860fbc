"""The data owner's audit report: one self-contained HTML page and a JSON file, restricted zone only.

:func:`build_report` turns the private frames, the attack scores and the risk evaluations into an
:class:`AuditReport` of aggregates: attack summaries and ROC points (:mod:`.stats`), risks with intervals,
shares of rows per **declared** bin of each column (categories named in the spec, numeric and datetime bins
over the declared bounds, text as lengths only), 2-way TVDs and TSTR vs TRTR (:mod:`.utility`).
:func:`write_report` renders it (figures from :mod:`.plots`, embedded as ``data:`` URIs: no external
CSS, script or image) next to its JSON.

The report shows figures, never records: no value leaves a frame except as a count or share in a bin the
spec declares; an undeclared category is counted under ``<other>``, never named. Its figures are exact,
computed on private rows, and not differentially private: the files belong in the attempt's restricted
reports directory, never in a published release, a log or a Prefect artifact.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from safesynth.audit import plots
from safesynth.audit.attacks.confidence import EvaluationResult
from safesynth.audit.attacks.text_copy import TextCopyResult
from safesynth.audit.dp_utility import tabular_columns
from safesynth.audit.stats import AttackSummary, auc_bound_for_epsilon, summarize_attack
from safesynth.audit.utility import (
    CorrelationDifference,
    TstrComparison,
    correlation_difference,
    marginal_tvd,
    pairwise_tvd,
    tstr_vs_trtr,
)
from safesynth.domains import bounds_of, categories_of
from safesynth.spec import (
    BooleanColumn,
    CategoricalColumn,
    ColumnSpec,
    DatetimeColumn,
    IntegerColumn,
    ReleaseSpec,
    TextColumn,
)

__all__ = ["AttackRoc", "AuditReport", "MarginalComparison", "build_report", "marginal_comparison", "render_html",
           "write_report"]

HTML_NAME, JSON_NAME = "audit_report.html", "audit_report.json"
_NULL, _OTHER = "<null>", "<other>"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackRoc:
    """One membership attack: its summary and its ROC curve points (restricted zone only)."""

    summary: AttackSummary
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MarginalComparison:
    """Shares of real and synthetic rows per declared bin of one column (text: per length bin).

    ``labels`` come from the spec only (declared categories, bounds, ``max_length``), plus ``<other>``
    (values outside the declared categories, counted, never named) and ``<null>`` when either side has one.
    """

    column: str
    kind: str
    labels: tuple[str, ...]
    real: tuple[float, ...]
    synthetic: tuple[float, ...]
    tvd: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Everything the owner's report shows; every section but the privacy claim is optional.

    ``tvd`` holds :func:`~safesynth.audit.utility.marginal_tvd`'s means (``tvd_1way``, ``tvd_2way``,
    ``tvd_2way_max``); ``pair_tvd`` the 2-way TVD of each column pair for the heat map.
    """

    dataset: str
    epsilon: float
    delta: float
    empirical_epsilon: float | None = None
    attacks: tuple[AttackRoc, ...] = ()
    risks: tuple[EvaluationResult, ...] = ()
    text_copies: tuple[TextCopyResult, ...] = ()
    marginals: tuple[MarginalComparison, ...] = ()
    tvd: Mapping[str, float] | None = None
    pair_tvd: tuple[tuple[str, str, float], ...] = ()
    correlation: CorrelationDifference | None = None
    tstr: TstrComparison | None = None

    @property
    def auc_bound(self) -> float:
        """The largest AUC any attack can reach under the claimed ``(epsilon, delta)``."""
        return auc_bound_for_epsilon(epsilon=self.epsilon, delta=self.delta)

    def warnings(self) -> list[str]:
        """Findings that indicate an implementation error (or a privacy bug), not a strong attack."""
        out = [f"attack `{a.summary.attack}` (AUC interval {a.summary.auc_interval[0]:.3f} to "
               f"{a.summary.auc_interval[1]:.3f}) must stay below the claimed epsilon's AUC bound "
               f"({self.auc_bound:.3f})" for a in self.attacks if a.summary.auc_interval[0] > self.auc_bound]
        if self.empirical_epsilon is not None and self.empirical_epsilon > self.epsilon:
            out.append(f"the empirical lower bound on epsilon ({self.empirical_epsilon:.3g}) must not exceed "
                       f"the claimed epsilon ({self.epsilon:.3g})")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain types, string keys, NaN as null; ROC points left to the figures."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "attacks"}
        out["attacks"] = [a.summary for a in self.attacks]
        out["auc_bound"] = self.auc_bound
        out["warnings"] = self.warnings()
        return dict(_plain(out))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ------------------------------------------------------------------------------------------- marginals


def _edges(lo: float, hi: float, bins: int) -> np.ndarray:
    return np.linspace(lo, hi, bins + 1)


def _codes(series: pd.Series, col: ColumnSpec, bins: int) -> tuple[list[str], np.ndarray]:
    """Declared bin labels and each row's bin (``-1``: null; ``-2``: outside the declared categories)."""
    if isinstance(col, CategoricalColumn):
        labels = list(categories_of(col))
        index = {c: i for i, c in enumerate(labels)}
        values = series.astype(object).where(series.notna(), None)
        return labels, np.array([-1 if v is None else index.get(str(v), -2) for v in values], dtype=int)
    if isinstance(col, BooleanColumn):
        b = series.astype("boolean")
        return ["false", "true"], np.where(b.isna().to_numpy(), -1, b.fillna(False).to_numpy(dtype=int))
    if isinstance(col, TextColumn):
        lengths = series.astype("str").str.len().astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        lo, hi, integer = 0.0, float(col.max_length), True
    elif isinstance(col, DatetimeColumn):
        stamps = pd.to_datetime(series).astype("datetime64[us]")
        lengths = np.where(stamps.isna(), np.nan, stamps.to_numpy().astype("int64") / 1e6)
        lo, hi, integer = pd.Timestamp(col.min).timestamp(), pd.Timestamp(col.max).timestamp(), False
    else:
        lengths = series.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        lo, hi = (float(v) for v in bounds_of(col))
        integer = isinstance(col, IntegerColumn)
    if integer and hi - lo + 1 <= bins:  # one bin per value: the same TVD as utility's equal-width bins
        labels = [str(int(lo) + i) for i in range(int(hi - lo) + 1)]
        codes = np.floor(lengths - lo)
    else:
        edges = _edges(lo, hi, bins)
        fmt = ((lambda v: pd.Timestamp(v, unit="s").strftime("%Y-%m-%d")) if isinstance(col, DatetimeColumn)
               else (lambda v: f"{v:.4g}"))
        labels = [f"[{fmt(a)}, {fmt(b)})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        codes = np.floor((lengths - lo) / (hi - lo) * bins)
    codes = np.clip(codes, 0, len(labels) - 1)
    return labels, np.where(np.isnan(codes), -1, codes).astype(int)


def _shares(codes: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(np.where(codes == -1, n + 1, np.where(codes == -2, n, codes)), minlength=n + 2)
    return counts / max(1, len(codes))


def marginal_comparison(real: pd.Series, synthetic: pd.Series, col: ColumnSpec, *, column: str,
                        bins: int = 20) -> MarginalComparison:
    """Shares of ``real`` and ``synthetic`` rows per declared bin of ``col`` (text: of text lengths)."""
    labels, r_codes = _codes(real, col, bins)
    _, s_codes = _codes(synthetic, col, bins)
    r, s = _shares(r_codes, len(labels)), _shares(s_codes, len(labels))
    keep = np.r_[np.ones(len(labels), dtype=bool), (r[-2:] > 0) | (s[-2:] > 0)]
    names = [*labels, _OTHER, _NULL]
    kind = "text length" if isinstance(col, TextColumn) else col.type
    return MarginalComparison(
        column=column, kind=kind, labels=tuple(n for n, k in zip(names, keep, strict=True) if k),
        real=tuple(float(v) for v in r[keep]), synthetic=tuple(float(v) for v in s[keep]),
        tvd=float(0.5 * np.abs(r - s).sum()))


# ------------------------------------------------------------------------------------------------ build


def _roc(member_scores: np.ndarray, non_member_scores: np.ndarray, summary: AttackSummary) -> AttackRoc:
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    fpr, tpr, _ = roc_curve(labels, np.r_[member_scores, non_member_scores], drop_intermediate=True)
    return AttackRoc(summary=summary, fpr=tuple(float(v) for v in fpr), tpr=tuple(float(v) for v in tpr))


def build_report(
    *,
    spec: ReleaseSpec,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    epsilon: float,
    delta: float,
    rng: np.random.Generator,
    attack_scores: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    risks: Sequence[EvaluationResult] = (),
    text_copies: Sequence[TextCopyResult] = (),
    target: str | None = None,
    positive: object = None,
    empirical_epsilon: float | None = None,
    bins: int = 20,
) -> AuditReport:
    """The report's figures from the frames, the attacks' scores and the risk evaluations.

    Args:
        spec: the resolved spec (declared domains: every bin and label comes from it).
        train: the rows the generator was fitted on (members; the "real" side of the marginals).
        holdout: the secret holdout (non-members; the test set of TSTR and TRTR).
        synthetic: the released rows.
        epsilon: the release's claimed epsilon (its accountant's statement).
        delta: the release's claimed delta.
        rng: the audit's seeded generator (bootstrap intervals of the AUCs), never the privacy noise.
        attack_scores: per attack name, its member and non-member scores (higher: more likely a member).
        risks: anonymeter-style evaluations (inference, singling out, linkability).
        text_copies: text copy measurements per text column.
        target: label column of TSTR vs TRTR (none: no utility classifier).
        positive: the target's positive class; needed with ``target``.
        empirical_epsilon: a measured lower bound on epsilon (canary auditing), when one ran.
        bins: bins of numeric, datetime and text-length marginals (wider integer domains only).

    Raises:
        ValueError: ``target`` is not a declared column or comes without ``positive``.
    """
    if target is not None and (target not in spec.columns or positive is None):
        raise ValueError(f"`target` ({target}) must be a declared column and come with `positive`")
    attacks = tuple(_roc(np.asarray(m, dtype=float), np.asarray(n, dtype=float),
                         summarize_attack(m, n, attack=name, rng=rng))
                    for name, (m, n) in (attack_scores or {}).items())
    marginals = tuple(marginal_comparison(train[name], synthetic[name], col, column=name, bins=bins)
                      for name, col in spec.columns.items())
    tvd = marginal_tvd(train, synthetic, spec) if len(train) and len(synthetic) else None
    comparison = None
    if target is not None and positive is not None:
        columns = tabular_columns(spec, target)
        comparison = tstr_vs_trtr(synthetic=synthetic[columns], train=train[columns], test=holdout[columns],
                                  target=target, positive=positive)
    return AuditReport(
        dataset=spec.dataset, epsilon=epsilon, delta=delta, empirical_epsilon=empirical_epsilon, attacks=attacks,
        risks=tuple(risks), text_copies=tuple(text_copies), marginals=marginals,
        tvd=None if tvd is None else {k: float(tvd[k]) for k in ("tvd_1way", "tvd_2way", "tvd_2way_max")},
        pair_tvd=tuple((a, b, v) for (a, b), v in pairwise_tvd(train, synthetic, spec).items()),
        correlation=correlation_difference(train, synthetic, spec), tstr=comparison)


# ------------------------------------------------------------------------------------------------ write

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:0.5em 0}
.warn{background:#fde2e2;border:1px solid #c44e52;padding:0.5em 1em}.note{color:#555;font-size:0.9em}"""


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{html.escape(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _attack_section(report: AuditReport) -> list[str]:
    if not report.attacks:
        return []
    fprs = sorted({f for a in report.attacks for f in a.summary.tpr_at_fpr}, reverse=True)
    rows = [[a.summary.attack, a.summary.auc, f"{a.summary.auc_interval[0]:.4f} to {a.summary.auc_interval[1]:.4f}",
             *(a.summary.tpr_at_fpr[f].value if f in a.summary.tpr_at_fpr else "" for f in fprs),
             a.summary.members, a.summary.non_members] for a in report.attacks]
    out = ["<h2>Membership attacks</h2>",
           f"<p>AUC bound under the claimed guarantee: {report.auc_bound:.4f}. The shaded region of each ROC "
           "plot is unreachable by any attack on a release with that guarantee.</p>",
           _table(["attack", "AUC", "95% interval", *(f"TPR at FPR {f:g}" for f in fprs), "members",
                   "non-members"], rows)]
    out += [_img(plots.roc_figure(attack=a.summary.attack, fpr=a.fpr, tpr=a.tpr, auc=a.summary.auc,
                                  epsilon=report.epsilon, delta=report.delta), f"ROC {a.summary.attack}")
            for a in report.attacks]
    return out


def _risk_section(report: AuditReport) -> list[str]:
    out: list[str] = []
    if report.risks:
        out += ["<h2>Inference, singling-out and linkability risks</h2>",
                _table(["evaluation", "risk", "interval", "members' success", "control success", "baseline",
                        "targets"],
                       [[r.attack, r.risk.value, f"{r.risk.ci[0]:.4f} to {r.risk.ci[1]:.4f}", r.attack_rate.value,
                         r.control_rate.value, r.baseline_rate.value, r.n_attacks] for r in report.risks]),
                _img(plots.risk_figure(names=[r.attack for r in report.risks], values=[r.risk.value for r in report.risks],
                                       lower=[r.risk.ci[0] for r in report.risks],
                                       upper=[r.risk.ci[1] for r in report.risks]), "risks")]
    if report.text_copies:
        out += ["<h2>Text copying</h2>",
                _table(["column", "verbatim (members)", "verbatim (control)", "near-verbatim (members)",
                        "near-verbatim (control)", "mean span (members)", "mean span (control)"],
                       [[t.column, t.verbatim_members, t.verbatim_non_members, t.near_verbatim_members,
                         t.near_verbatim_non_members, t.mean_span_members, t.mean_span_non_members]
                        for t in report.text_copies])]
    return out


def _utility_section(report: AuditReport) -> list[str]:
    out = ["<h2>Utility</h2>"]
    summary = [[k, v] for k, v in (report.tvd or {}).items()]
    if report.correlation is not None:
        summary += [["correlation difference (mean)", report.correlation.mean_abs],
                    ["correlation difference (max)", report.correlation.max_abs]]
    if summary:
        out.append(_table(["figure", "value"], summary))
    if report.tstr is not None:
        t = report.tstr
        out += ["<h3>Train on synthetic, test on real</h3>",
                _img(plots.bars_figure(title=f"TSTR vs TRTR (ROC AUC ratio {t.roc_auc_ratio:.3f})",
                                       groups=["accuracy", "ROC AUC"],
                                       series=[("TSTR (synthetic)", [t.tstr_accuracy, t.tstr_roc_auc]),
                                               ("TRTR (real)", [t.trtr_accuracy, t.trtr_roc_auc])],
                                       ylabel="score on the holdout"), "TSTR vs TRTR")]
    if report.pair_tvd:
        columns = list(dict.fromkeys(c for a, b, _ in report.pair_tvd for c in (a, b)))
        out += ["<h3>2-way marginals</h3>", _img(plots.tvd_heatmap(columns=columns, pairs=report.pair_tvd),
                                                  "2-way TVD heat map")]
    if report.marginals:
        out.append('<h3>1-way marginals</h3><p class="note">Shares of rows per declared bin; text columns as '
                   "lengths only.</p>")
        out += [_img(plots.marginal_figure(column=m.column, kind=m.kind, labels=m.labels, real=m.real,
                                           synthetic=m.synthetic, tvd=m.tvd), f"marginal {m.column}")
                for m in report.marginals]
    return out if len(out) > 1 else []


def render_html(report: AuditReport) -> str:
    """The report as one self-contained HTML page (inline CSS, figures as ``data:`` URIs, no script)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Privacy audit: {esc(report.dataset)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Privacy audit: {esc(report.dataset)}</h1>",
             '<p class="note">Restricted: exact figures computed on private rows (not differentially private). '
             "Keep this file in the release attempt's reports directory; never publish it.</p>"]
    parts += [f'<p class="warn">{esc(w)}</p>' for w in report.warnings()]
    parts += ["<h2>Privacy guarantee</h2>",
              _table(["figure", "value"], [["claimed epsilon", report.epsilon], ["claimed delta", f"{report.delta:g}"],
                                           ["AUC bound", report.auc_bound],
                                           ["empirical epsilon lower bound", "not measured"
                                            if report.empirical_epsilon is None else report.empirical_epsilon]]),
              _img(plots.epsilon_figure(epsilon=report.epsilon, empirical_epsilon=report.empirical_epsilon),
                   "epsilon claimed vs measured")]
    parts += _attack_section(report) + _risk_section(report) + _utility_section(report)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(report: AuditReport, directory: Path | str) -> tuple[Path, Path]:
    """Write ``audit_report.html`` and ``audit_report.json`` under ``directory`` (created 0700 if missing).

    The same report gives byte-identical files. Returns the HTML and the JSON path.
    """
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    html_path, json_path = out / HTML_NAME, out / JSON_NAME
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n",
                         encoding="utf-8")
    return html_path, json_path
