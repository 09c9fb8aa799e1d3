"""Figures of the stain stage: thumbnails of virtual stains, Bland-Altman, predicted vs measured."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pastflow.figures import figure_dpi, fit_image, save_figure  # noqa: E402

DPI = 100


def plot_thumbnails(he: np.ndarray, stains: dict[str, np.ndarray], hscores: dict[str, float],
                    *, extent_um: tuple[float, float], grid_um: float | None, title: str,
                    path: str | Path) -> None:
    """H&E and each virtual stain side by side (axes in microns), region grid overlaid."""
    def label(marker: str) -> str:
        score = hscores.get(marker, np.nan)
        # a marker none of whose genes the model predicts: drawn without DAB, not scored
        return (f"virtual {marker}  (H-score {score:.0f})" if np.isfinite(score)
                else f"virtual {marker}  (not scored: genes absent)")

    panels = [("H&E", he)] + [(label(m), img) for m, img in stains.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    width, height = extent_um
    side = round(4.4 * figure_dpi(fig, DPI))  # a panel's pixels in the saved figure
    for ax, (label, image) in zip(axes[0], panels):
        ax.imshow(fit_image(image, side), extent=(0, width, height, 0), interpolation="none")
        if grid_um:
            for x in np.arange(grid_um, width, grid_um):
                ax.axvline(x, color="k", lw=0.4, alpha=0.5)
            for y in np.arange(grid_um, height, grid_um):
                ax.axhline(y, color="k", lw=0.4, alpha=0.5)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("um")
    axes[0, 0].set_ylabel("um")
    fig.suptitle(f"{title}: virtual IHC (hematoxylin from the H&E + DAB from predicted expression)",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, DPI)


MAX_SAMPLES_IN_LEGEND = 8  # beyond this, colours only tell samples apart, unnamed


def _marker_axes(markers: list[str], size: float = 3.4):
    cols = min(len(markers), 5)
    rows = -(-len(markers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(markers):]:
        ax.set_visible(False)
    return fig, list(axes.flat[:len(markers)])


def _legend(fig, samples: list[str], colours: dict) -> None:
    """One legend below the panels: the marker shapes, and the samples' colours when few."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color="grey", label="region"),
               Line2D([], [], ls="", marker="s", color="grey", markeredgecolor="k", label="slide")]
    if len(samples) <= MAX_SAMPLES_IN_LEGEND:
        handles += [Line2D([], [], ls="", marker="o", color=colours[s], label=s) for s in samples]
    else:
        handles.append(Line2D([], [], ls="", label=f"{len(samples)} slides, one colour each"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 10),
               fontsize=8, frameon=False)


def main_level_row(summary: pd.DataFrame, marker: str) -> pd.Series | None:
    """The marker's summary row below the slide level with the most pairs (grid regions, or
    a tissue microarray's cores), or None."""
    rows = summary[(summary["marker"] == marker) & (summary["level"] != "slide")]
    return rows.loc[rows["n"].idxmax()] if len(rows) else None


def plot_bland_altman(pairs: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """Per marker: predicted - measured H-score against their mean, regions or cores (dots,
    one colour per sample) and slides (squares); bias and 95% limits of agreement of the
    level with most pairs (:func:`main_level_row`)."""
    markers = sorted(pairs["marker"].unique())
    fig, axes = _marker_axes(markers)
    samples = sorted(pairs["sample"].unique())
    colours = dict(zip(samples, plt.cm.tab10(np.arange(len(samples)) % 10)))
    for ax, marker in zip(axes, markers):
        group = pairs[pairs["marker"] == marker]
        for (sample, level), g in group.groupby(["sample", "level"]):
            mean = (g["predicted"] + g["measured"]) / 2
            ax.scatter(mean, g["predicted"] - g["measured"], s=50 if level == "slide" else 14,
                       marker="s" if level == "slide" else "o", color=colours[sample],
                       edgecolor="k" if level == "slide" else "none", alpha=0.8)
        row = main_level_row(summary, marker)
        if row is not None:
            r = row
            ax.axhline(r["bias"], color="k", lw=1)
            for lim in (r["loa_lower"], r["loa_upper"]):
                ax.axhline(lim, color="k", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(marker, fontsize=10)
        ax.set_xlabel("mean H-score", fontsize=9)
        ax.set_ylabel("predicted - measured", fontsize=9)
    _legend(fig, samples, colours)
    fig.suptitle("Bland-Altman: H-score from predicted vs measured expression "
                 "(solid: bias, dashed: 95% limits, of the level with most pairs)", fontsize=10)
    save_figure(fig, path, DPI)


def plot_agreement_scatter(pairs: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """Per marker: predicted against measured H-score (regions or cores dots, slides squares),
    with the Pearson r and n of the level with most pairs (:func:`main_level_row`)."""
    markers = sorted(pairs["marker"].unique())
    fig, axes = _marker_axes(markers)
    samples = sorted(pairs["sample"].unique())
    colours = dict(zip(samples, plt.cm.tab10(np.arange(len(samples)) % 10)))
    for ax, marker in zip(axes, markers):
        group = pairs[pairs["marker"] == marker]
        for (sample, level), g in group.groupby(["sample", "level"]):
            ax.scatter(g["measured"], g["predicted"], s=50 if level == "slide" else 14,
                       marker="s" if level == "slide" else "o", color=colours[sample],
                       edgecolor="k" if level == "slide" else "none", alpha=0.8)
        top = max(10.0, float(group[["predicted", "measured"]].to_numpy().max()) * 1.05)
        ax.plot([0, top], [0, top], color="grey", lw=0.6)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        row = main_level_row(summary, marker)
        label = (f"r = {row['pearson_r']:.2f} (n = {row['n']} {row['level']}s)"
                 if row is not None else "")
        ax.set_title(f"{marker}  {label}", fontsize=10)
        ax.set_xlabel("H-score, measured expression", fontsize=9)
        ax.set_ylabel("H-score, predicted from H&E", fontsize=9)
    _legend(fig, samples, colours)
    fig.suptitle("Virtual IHC H-scores on held-out slides (r over the level with most pairs: "
                 "regions or TMA cores)", fontsize=10)
    save_figure(fig, path, DPI)
