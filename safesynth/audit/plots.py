"""The audit report's figures as PNG bytes: the one module that imports matplotlib.

Figures are drawn on ``Figure`` objects with an explicit Agg canvas, never through pyplot: no global figure
registry to leak into, no backend selection, nothing that depends on the display. They render under
matplotlib's default style (a user's ``matplotlibrc`` changes nothing) and PNGs carry no metadata (no
"Software" version line), so the same inputs give the same bytes. Every input is an aggregate (rates,
shares per declared bin, curve points): no record reaches this module.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from safesynth.audit.stats import roc_bound_for_epsilon

__all__ = ["bars_figure", "epsilon_figure", "marginal_figure", "risk_figure", "roc_figure", "tvd_heatmap"]

_RC: dict[RcKeyType, Any] = {"svg.hashsalt": "safesynth-report", "figure.dpi": 100.0, "savefig.dpi": 100.0, "font.size": 8.0,
       "axes.titlesize": 9.0, "savefig.bbox": None}
_REAL, _SYNTHETIC, _BOUND = "#4c72b0", "#dd8452", "#c44e52"


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        try:
            yield fig
        finally:
            fig.clear()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def roc_figure(*, attack: str, fpr: Sequence[float], tpr: Sequence[float], auc: float, epsilon: float,
               delta: float) -> bytes:
    """One attack's ROC curve on a linear and on a log FPR axis, under the ``(epsilon, delta)``-DP boundary.

    The shaded region above the boundary (``TPR <= e^eps FPR + delta``, ``1 - FPR <= e^eps (1 - TPR) +
    delta``) is unreachable for any test against a release with that guarantee.
    """
    x, y = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    with _figure(8.0, 3.4) as fig:
        linear, log = fig.subplots(1, 2)
        floor = 1e-4 if not (x > 0).any() else min(1e-3, float(x[x > 0].min()) / 2)
        for ax, grid in ((linear, np.linspace(0.0, 1.0, 401)), (log, np.geomspace(floor, 1.0, 401))):
            bound = roc_bound_for_epsilon(grid, epsilon=epsilon, delta=delta)
            ax.fill_between(grid, bound, 1.0, color=_BOUND, alpha=0.12, linewidth=0)
            ax.plot(grid, bound, color=_BOUND, linewidth=1.2, label=f"{epsilon:g}-DP boundary (delta {delta:g})")
            ax.plot(grid, grid, color="grey", linestyle=":", linewidth=0.8, label="chance")
            ax.step(np.clip(x, floor, 1.0) if ax is log else x, y, where="post", color=_REAL, linewidth=1.4,
                    label=f"{attack} (AUC {auc:.3f})")
            ax.set_ylim(0.0, 1.02)
            ax.set_ylabel("true positive rate (members)")
        linear.set_xlim(0.0, 1.0)
        linear.set_xlabel("false positive rate (non-members)")
        linear.legend(loc="lower right", fontsize=7)
        log.set_xscale("log")
        log.set_xlim(floor, 1.0)
        log.set_xlabel("false positive rate, log scale")
        fig.suptitle(f"ROC: {attack}")
        return _png(fig)


def marginal_figure(*, column: str, kind: str, labels: Sequence[str], real: Sequence[float],
                    synthetic: Sequence[float], tvd: float) -> bytes:
    """Shares of real and synthetic rows per declared bin of one column, side by side."""
    pos = np.arange(len(labels))
    with _figure(max(4.0, min(10.0, 1.2 + 0.35 * len(labels))), 2.8) as fig:
        ax = fig.subplots()
        ax.bar(pos - 0.2, real, width=0.4, color=_REAL, label="real (training)")
        ax.bar(pos + 0.2, synthetic, width=0.4, color=_SYNTHETIC, label="synthetic")
        ax.set_xticks(pos, labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                      fontsize=7)
        ax.set_ylabel("share of rows")
        ax.set_title(f"{column} ({kind}): TVD {tvd:.3f}")
        ax.legend(fontsize=7)
        return _png(fig)


def tvd_heatmap(*, columns: Sequence[str], pairs: Sequence[tuple[str, str, float]]) -> bytes:
    """The 2-way total variation distance of each column pair (lower triangle)."""
    index = {c: i for i, c in enumerate(columns)}
    matrix = np.full((len(columns), len(columns)), np.nan)
    for a, b, value in pairs:
        i, j = sorted((index[a], index[b]))
        matrix[j, i] = value
    size = max(3.5, min(9.0, 1.5 + 0.45 * len(columns)))
    with _figure(size + 1.0, size) as fig:
        ax = fig.subplots()
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0.0, vmax=max(0.05, float(np.nanmax(matrix))))
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(columns)), columns, fontsize=7)
        for (j, i), value in np.ndenumerate(matrix):
            if not math.isnan(value) and len(columns) <= 12:
                ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
        fig.colorbar(image, ax=ax, label="2-way TVD")
        ax.set_title("2-way marginal TVD, real vs synthetic")
        return _png(fig)


def bars_figure(*, title: str, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float]]],
                ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0)) -> bytes:
    """Grouped bars: one group per entry of ``groups``, one bar per named series (TSTR vs TRTR)."""
    pos = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    colours = (_SYNTHETIC, _REAL, "#55a868", "#8172b3")
    with _figure(5.0, 3.0) as fig:
        ax = fig.subplots()
        for k, (name, values) in enumerate(series):
            offset = (k - (len(series) - 1) / 2) * width
            bars = ax.bar(pos + offset, values, width=width, color=colours[k % len(colours)], label=name)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(pos, groups)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower right")
        return _png(fig)


def risk_figure(*, names: Sequence[str], values: Sequence[float], lower: Sequence[float],
                upper: Sequence[float]) -> bytes:
    """Anonymeter-style risks with their confidence intervals, one row per evaluation."""
    v = np.asarray(values, dtype=float)
    err = np.vstack([v - np.asarray(lower, dtype=float), np.asarray(upper, dtype=float) - v])
    with _figure(6.0, 1.2 + 0.35 * len(names)) as fig:
        ax = fig.subplots()
        pos = np.arange(len(names))
        ax.errorbar(v, pos, xerr=np.clip(err, 0.0, None), fmt="o", color=_REAL, capsize=3)
        ax.set_yticks(pos, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("risk (members over control), with confidence interval")
        ax.set_title("Inference, singling-out and linkability risks")
        return _png(fig)


def epsilon_figure(*, epsilon: float, empirical_epsilon: float | None) -> bytes:
    """The claimed epsilon next to the empirical lower bound (when an auditing run measured one)."""
    with _figure(5.0, 1.9) as fig:
        ax = fig.subplots()
        names = ["claimed epsilon", "empirical lower bound"]
        values = [epsilon, empirical_epsilon if empirical_epsilon is not None else 0.0]
        colours = [_REAL, _BOUND if empirical_epsilon is not None and empirical_epsilon > epsilon else _SYNTHETIC]
        bars = ax.barh(names, values, color=colours)
        ax.bar_label(bars, labels=[f"{epsilon:.3g}", "not measured" if empirical_epsilon is None
                                   else f"{empirical_epsilon:.3g}"], fontsize=7, padding=3)
        ax.invert_yaxis()
        ax.set_xlim(0.0, max(epsilon, empirical_epsilon or 0.0, 0.1) * 1.25)
        ax.set_xlabel("epsilon")
        ax.set_title("Privacy guarantee: claimed vs measured")
        return _png(fig)
