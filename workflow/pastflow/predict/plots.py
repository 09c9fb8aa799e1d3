"""Figures of the evaluation: per-gene Pearson r by method, and measured vs predicted maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pastflow.figures import MAX_WIDTH_PX, figure_dpi, fit_image, save_figure

DPI = 90
METHOD_COLOURS = {"pastflow_head": "C0", "pastflow_ridge": "C2", "morphology_ridge": "C1",
                  "random_encoder": "C7", "mean_baseline": "C3"}
PROBE_COLOURS = ("C4", "C5", "C6", "C8", "C9")  # the probe encoders', in name order


def plotted_methods(methods) -> dict[str, str]:
    """The methods among ``methods`` to draw, in report order, with their colours: the
    built-in ones, then the probe encoders' (``resnet50_imagenet_ridge``, ...)."""
    present = set(methods)
    colours = {m: c for m, c in METHOD_COLOURS.items() if m in present}
    probes = sorted(present - set(METHOD_COLOURS))
    colours.update({m: PROBE_COLOURS[i % len(PROBE_COLOURS)] for i, m in enumerate(probes)})
    return colours


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_gene(per_gene: pd.DataFrame, sample: str, path: str | Path | None = None, *,
                  ax=None):
    """Grouped bars: Pearson r of every scored gene (x, sorted by the head's r) per method.

    ``per_gene`` is one sample's long table (``method, gene, pearson_r, top, marker`` and,
    when present, ``train_top``); the top genes are the ``train_top`` ones (most variable over
    the training cells) when the table has them, else ``top``; the other scored genes
    (the test sample's own top genes, markers) follow them, after a gap. Dashed lines: each
    method's mean over the top genes. Returns the figure; writes it to ``path`` (PNG,
    atomically) if given.
    """
    plt = _pyplot()
    colours = plotted_methods(per_gene["method"])
    methods = list(colours)
    wide = per_gene.pivot_table(index="gene", columns="method", values="pearson_r")
    flags = per_gene.drop_duplicates("gene").set_index("gene")
    key = "pastflow_head" if "pastflow_head" in wide else methods[0]
    chosen = flags["train_top"] if "train_top" in flags else flags["top"]
    top = wide.loc[flags.index[chosen]].sort_values(key, ascending=False)
    extra = wide.loc[flags.index[~chosen]].sort_values(key, ascending=False)
    genes = list(top.index) + list(extra.index)
    x = np.arange(len(genes)) + np.where(np.arange(len(genes)) >= len(top), 1.0, 0.0)
    if ax is None:
        # At most a report column wide at DPI: scaled down instead, the labels would blur.
        fig, ax = plt.subplots(figsize=(min(MAX_WIDTH_PX / DPI,
                                            max(8.0, 0.28 * len(genes) + 2)), 4.2))
    else:
        fig = ax.figure
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = wide.loc[genes, method].to_numpy()
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width,
               color=colours[method], label=f"{method} (mean {top[method].mean():.3f})")
        ax.hlines(top[method].mean(), x[0] - 0.5, x[len(top) - 1] + 0.5 if len(top) else 0,
                  colors=colours[method], linestyles="dashed", linewidth=0.8)
    ax.set_xticks(x, [f"{g}*" if flags.loc[g, "marker"] else g for g in genes], rotation=90,
                  fontsize=7)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlim(x[0] - 0.7, x[-1] + 0.7)
    ax.set_ylim(min(-0.1, float(np.nanmin(wide.to_numpy())) - 0.05), 1.0)
    ax.set_ylabel("Pearson r (measured vs predicted)")
    where = "over the training cells" if "train_top" in flags else "on this sample"
    ax.set_title(f"{sample}: the {len(top)} genes most variable {where}, then the other scored "
                 "genes (* = marker gene)", fontsize=10)
    ax.legend(fontsize=7, ncol=len(methods), loc="upper right", frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_per_gene_intervals(per_gene: pd.DataFrame, sample: str,
                            path: str | Path | None = None):
    """Pearson r with its 95% bootstrap interval, per gene (rows) and method (colours), for
    the ``train_top`` genes of one sample's long table (``method, gene, pearson_r,
    train_top, ci_low, ci_high``), sorted by the head's r. The mean baseline is left out: it
    is 0 with no spread by construction. Returns the figure; writes it to ``path`` if given.
    """
    plt = _pyplot()
    shown = per_gene[per_gene["train_top"] & (per_gene["method"] != "mean_baseline")]
    colours = plotted_methods(shown["method"])
    methods = list(colours)
    r = shown.pivot_table(index="gene", columns="method", values="pearson_r")
    key = "pastflow_head" if "pastflow_head" in r else methods[0]
    genes = list(r.sort_values(key, ascending=True).index)  # best at the top
    low = shown.pivot_table(index="gene", columns="method", values="ci_low").loc[genes]
    high = shown.pivot_table(index="gene", columns="method", values="ci_high").loc[genes]
    r = r.loc[genes]
    fig, ax = plt.subplots(figsize=(7.5, max(3.5, 0.24 * len(genes) + 1.6)))
    y = np.arange(len(genes))
    step = 0.7 / max(len(methods), 1)
    for i, method in enumerate(methods):
        offset = (i - (len(methods) - 1) / 2) * step
        values = r[method].to_numpy()
        # A percentile interval need not hold the estimate on all cells: clip, never negative.
        ax.errorbar(values, y + offset,
                    xerr=np.clip([values - low[method].to_numpy(),
                                  high[method].to_numpy() - values], 0, None),
                    fmt="o", markersize=2.5, elinewidth=0.9, capsize=0,
                    color=colours[method],
                    label=f"{method} (mean {np.mean(values):.3f})")
    ax.set_yticks(y, genes, fontsize=7)
    ax.set_ylim(-0.7, len(genes) - 0.3)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    ax.set_xlabel("Pearson r (measured vs predicted), 95% bootstrap interval over cells")
    ax.set_title(f"{sample}: the {len(genes)} genes most variable over the training cells",
                 fontsize=10)
    # The legend goes under the axes: inside, it would hide some genes' intervals.
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=2,
               frameon=False)
    fig.tight_layout(rect=(0, 0.55 / fig.get_figheight(), 1, 1))
    _save(fig, path)
    return fig


def plot_marker_maps(thumbnail: np.ndarray, downsample: float, xy: np.ndarray,
                     panels: dict[str, np.ndarray], genes: Sequence[str],
                     scores: dict[str, dict[str, float]], sample: str,
                     path: str | Path | None = None, *, point_size: float | None = None):
    """Rows = ``genes``, columns = ``panels`` (``"measured"``, then each method): the values
    ``(n_cells, len(genes))`` drawn at the cells over the H&E thumbnail.

    ``xy`` is ``(n_cells, 2)`` in H&E level-0 pixels; thumbnail px = level-0 px / ``downsample``.
    Each panel's colours span its own 1st-99th percentile: Pearson r ignores scale, and a
    prediction shrunk towards the mean would look blank on the measurement's scale.
    ``scores[method][gene]`` (r) goes in the panel titles. Returns the figure.
    """
    plt = _pyplot()
    columns = list(panels)
    fig, axes = plt.subplots(len(genes), len(columns), squeeze=False,
                             figsize=(3.4 * len(columns), 3.0 * len(genes)))
    points = xy / downsample
    size = point_size or float(np.clip(20000 / max(len(points), 1), 0.5, 16))
    # Frame the cells, not the whole slide (glass margins waste the panel).
    pad = 0.03 * float(np.ptp(points, axis=0).max()) + 2
    (x0, y0), (x1, y1) = points.min(axis=0) - pad, points.max(axis=0) + pad
    # Only the framed part of the H&E, at about the panel's size in the saved figure.
    h, w = thumbnail.shape[:2]
    left, top = max(0, int(x0)), max(0, int(y0))
    right, bottom = min(w, int(np.ceil(x1)) + 1), min(h, int(np.ceil(y1)) + 1)
    backdrop = thumbnail[top:max(top, bottom), left:max(left, right)]
    if backdrop.size:
        backdrop = fit_image(backdrop, round(3.4 * figure_dpi(fig, DPI)))
    extent = (left - 0.5, right - 0.5, bottom - 0.5, top - 0.5)
    for row, gene in enumerate(genes):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if backdrop.size:
                ax.imshow(backdrop, alpha=0.55, extent=extent)
            values = panels[name][:, row]
            low, high = np.percentile(values, [1, 99])
            order = np.argsort(values)  # high values drawn last, on top
            art = ax.scatter(points[order, 0], points[order, 1], c=values[order], s=size,
                             cmap="magma", vmin=low, vmax=high if high > low else low + 1e-6,
                             linewidths=0)
            r = scores.get(name, {}).get(gene)
            ax.set_title(f"{gene}: {name}" + ("" if r is None else f" (r = {r:.2f})"),
                         fontsize=9)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y1, y0)
            ax.set_axis_off()
            fig.colorbar(art, ax=ax, fraction=0.04, pad=0.01)
    fig.suptitle(f"{sample}: measured vs predicted expression (log1p) over the H&E")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    _save(fig, path)
    return fig


def _save(fig, path) -> None:
    if path is not None:
        save_figure(fig, path, dpi=DPI, close=False)  # the caller gets the figure back
