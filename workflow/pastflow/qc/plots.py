"""Per-sample QC figures: counts and genes per cell, and counts mapped over the H&E."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pastflow.figures import figure_dpi, fit_image, save_figure  # noqa: E402
from pastflow.qc.settings import QCSettings  # noqa: E402

DPI = 100


def plot_qc_distributions(raw: ad.AnnData, thresholds: QCSettings, sample: str, path) -> None:
    """Histograms of total counts and detected genes per cell, thresholds marked.

    ``raw`` is the unfiltered table with ``calculate_qc_metrics`` columns in ``obs``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    panels = [("total_counts", thresholds.min_counts, "total counts per cell"),
              ("n_genes_by_counts", thresholds.min_genes, "genes detected per cell")]
    for ax, (column, cut, label) in zip(axes, panels):
        values = raw.obs[column].to_numpy()
        # Integer-aligned bins when the range is small, or the histogram aliases into stripes.
        top = int(np.ceil(values.max())) + 1 if len(values) else 1
        bins = np.arange(0, top + 1) - 0.5 if top <= 120 else 60
        ax.hist(values, bins=bins, color="#4c72b0")
        ax.axvline(cut, color="#c44e52", ls="--", label=f"threshold {cut}")
        ax.set_xlabel(label)
        ax.set_ylabel("cells")
        ax.legend(frameon=False)
    fig.suptitle(f"{sample}: {raw.n_obs} cells, {int((raw.obs['total_counts'] >= thresholds.min_counts).sum())}"
                 f" with >= {thresholds.min_counts} counts")
    save_figure(fig, path, DPI)


def plot_qc_spatial(raw: ad.AnnData, thumbnail: np.ndarray, downsample: float, sample: str,
                    path) -> None:
    """Total counts per cell (log10 colour) over the H&E thumbnail, in H&E pixel space."""
    h, w = thumbnail.shape[:2]
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.6), constrained_layout=True)
    # At about the axis' size in the saved figure; coordinates stay the thumbnail's pixels.
    ax.imshow(fit_image(thumbnail, round(7 * max(1.0, h / w) * figure_dpi(fig, DPI))),
              extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    x = raw.obs["x_px"].to_numpy() / downsample
    y = raw.obs["y_px"].to_numpy() / downsample
    counts = np.log10(1 + raw.obs["total_counts"].to_numpy())
    size = float(np.clip(20_000 / max(raw.n_obs, 1), 2.0, 40.0))
    points = ax.scatter(x, y, c=counts, s=size, cmap="viridis", alpha=0.8, linewidths=0)
    fig.colorbar(points, ax=ax, shrink=0.7, label="log10(1 + total counts)")
    ax.set_title(f"{sample}: counts per cell over the H&E ({raw.n_obs} units)")
    ax.set_axis_off()
    save_figure(fig, path, DPI)
