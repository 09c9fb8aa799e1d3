"""Survival figures: Kaplan-Meier of risk groups, forest plot, c-index bars, td-AUC.

Functions draw on a given matplotlib ``ax`` (lifelines' convention) and return what they
computed; :func:`write_figures` saves them through :func:`pastflow.figures.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import KaplanMeierFitter  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from lifelines.statistics import logrank_test  # noqa: E402

from pastflow.figures import save_figure  # noqa: E402

GROUP_COLOURS = {"low risk": "#2b83ba", "high risk": "#d7191c"}


def risk_groups(risk: np.ndarray) -> np.ndarray:
    """``True`` = high risk: above the cohort median of ``risk`` ``(n,)``."""
    risk = np.asarray(risk, float)
    return risk > np.median(risk)


def plot_km(time: np.ndarray, event: np.ndarray, risk: np.ndarray, ax, title: str = "") -> float:
    """Kaplan-Meier curves of the patients above / at-or-below the median ``risk``, with
    the log-rank test between them; returns its p-value (NaN when a group is empty)."""
    time, event = np.asarray(time, float), np.asarray(event).astype(int)
    high = risk_groups(risk)
    for name, members in (("low risk", ~high), ("high risk", high)):
        if members.any():
            KaplanMeierFitter(label=f"{name} (n={members.sum()})").fit(
                time[members], event[members]).plot_survival_function(
                ax=ax, ci_show=True, color=GROUP_COLOURS[name], show_censors=True)
    p = float("nan")
    if high.any() and (~high).any():
        p = float(logrank_test(time[high], time[~high], event[high], event[~high]).p_value)
    ax.set_title(f"{title}\nlog-rank p = {p:.2g}", fontsize=9)
    ax.set_xlabel("time (os_time units)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    return p


def km_figure(time: np.ndarray, event: np.ndarray, risks: dict[str, np.ndarray]) -> tuple[plt.Figure, dict[str, float]]:
    """One Kaplan-Meier panel per model (cross-validated risk, median split); p-values."""
    n = len(risks)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    pvalues = {}
    for ax, (model, risk) in zip(axes.flat, risks.items()):
        pvalues[model] = plot_km(time, event, risk, ax, title=model)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig, pvalues


def plot_forest(summary: pd.DataFrame, ax, title: str = "", rows: int = 0) -> None:
    """Hazard ratio per standard deviation of each covariate with its 95% CI (log axis),
    from a lifelines ``summary`` table. ``rows``: the row slots of the axis (a panel beside a
    longer one keeps its row spacing, its rows at the top)."""
    table = summary.sort_values("coef")
    rows = max(rows, len(table))
    y = np.arange(len(table)) + rows - len(table)
    hr = table["exp(coef)"].to_numpy()
    low, high = table["exp(coef) lower 95%"].to_numpy(), table["exp(coef) upper 95%"].to_numpy()
    colours = np.where(table["p"] < 0.05, "#d7191c", "#404040")
    for yi, h, lo, hi, colour in zip(y, hr, low, high, colours):
        ax.errorbar(h, yi, xerr=[[h - lo], [hi - h]], fmt="o", color=colour, capsize=3, ms=4)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    # Plain ratios (0.5, 1, 2) rather than matplotlib's overlapping 4x10^-1 minor labels.
    ticks = [v for v in (0.125, 0.25, 0.5, 1, 2, 4, 8) if low.min() / 1.5 <= v <= high.max() * 1.5]
    ax.set_xticks(ticks or [1])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y)
    ax.set_yticklabels(table.index, fontsize=7)
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set_xlabel("hazard ratio per SD (95% CI); red: p < 0.05")
    ax.set_title(title, fontsize=9)


MODEL_COLOURS = {"true_hazard": "#9e9e9e", "clinical": "#e6550d"}


def plot_cindex(table: pd.DataFrame, ax) -> None:
    """Bars of ``cindex`` with ``ci_low``-``ci_high`` intervals, one per ``model``; the
    ``true_hazard`` row (simulated cohorts) drawn in grey as the ceiling, the ``clinical``
    baseline in orange with a dotted line at its c-index: the value to beat."""
    y = np.arange(len(table))
    values = table["cindex"].to_numpy()
    err = [values - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - values]
    colours = [MODEL_COLOURS.get(m, "#3182bd") for m in table["model"]]
    ax.barh(y, values, xerr=err, color=colours, capsize=3)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=0.8)
    baseline = table.loc[table["model"] == "clinical", "cindex"]
    if len(baseline):
        value = float(baseline.iloc[0])
        ax.axvline(value, color=MODEL_COLOURS["clinical"], linestyle=":", linewidth=1.2)
        ax.text(value, 1.01, "clinical baseline", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color=MODEL_COLOURS["clinical"])
    for yi, v in zip(y, values):
        ax.text(0.02, yi, f"{v:.3f}", va="center", color="white", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(table["model"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("cross-validated c-index (95% bootstrap interval)")


def plot_td_auc(table: pd.DataFrame, ax, reason: str | None = None) -> None:
    """td-AUC against time, one line per model; the reason when nothing was computed."""
    if table.empty:
        ax.text(0.5, 0.5, f"time-dependent AUC not computed:\n{reason}", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    for model, rows in table.groupby("model", sort=False):
        ax.plot(rows["time"], rows["auc"], marker="o", label=model)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (os_time units)")
    ax.set_ylabel("cumulative/dynamic AUC")
    ax.legend(fontsize=7)


def write_figures(results, out_dir: str | Path) -> None:
    """``cindex.png``, ``km.png``, ``forest.png`` and ``td_auc.png`` in ``out_dir`` from the
    tables of ``pastflow survival`` (a :class:`pastflow.survival.cohort.SurvivalResults`)."""
    from pastflow.survival.metrics import ALL_FAILED, unavailable_reason

    out = Path(out_dir)
    risk = results.risk
    time, event = risk["os_time"].to_numpy(float), risk["os_event"].to_numpy(int)
    models = [c for c in risk.columns if c not in ("patient", "os_time", "os_event")]
    fig, _ = km_figure(time, event, {m: risk[m].to_numpy(float) for m in models})
    save_figure(fig, out / "km.png")

    from pastflow.survival.cohort import BASELINE_PREFIX

    coefficients = results.coefficients
    models = results.models.set_index("model")
    baseline_columns = [c for c in coefficients.columns if c.startswith(BASELINE_PREFIX)]
    summary = coefficients.drop(columns=baseline_columns)
    panels = [(summary, "combined")]
    if baseline_columns and "clinical" in models.index:
        # The clinical baseline's own fit beside the combined one: how age, stage, ... weigh
        # alone, and how much of that the combined model keeps.
        baseline = coefficients[baseline_columns].dropna(how="all")
        baseline.columns = [c[len(BASELINE_PREFIX):] for c in baseline_columns]
        panels.insert(0, (baseline, "clinical"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 1.2 + 0.28 * len(summary)),
                             squeeze=False)
    for ax, (table, name) in zip(axes.flat, panels):
        row = models.loc[name]
        plot_forest(table, ax, title=f"{'clinical baseline' if name == 'clinical' else name} "
                                     f"model, all {int(row['n_patients'])} patients "
                                     f"(penalizer {row['final_penalizer']:g})",
                    rows=len(summary))
    fig.tight_layout()
    save_figure(fig, out / "forest.png")

    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.45 * len(results.cindex)))
    plot_cindex(results.cindex, ax)
    fig.tight_layout()
    save_figure(fig, out / "cindex.png")

    # An empty td-AUC table: the reason is found again from the outcomes.
    reason = (unavailable_reason(time, event) or ALL_FAILED) if results.td_auc.empty else None
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_td_auc(results.td_auc, ax, reason)
    fig.tight_layout()
    save_figure(fig, out / "td_auc.png")
