"""Training curves: every loss part per step, raw and smoothed, one panel each; the validation
loss of each part (``val_<part>`` columns, at the validated steps) on the same panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pastflow.figures import save_figure


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over ``window`` steps (shorter at the start)."""
    values = np.asarray(values, np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    return (cumulative[index] - cumulative[start]) / (index - start)


def plot_training_curves(history: pd.DataFrame, path: str | Path | None = None, *,
                         title: str = "pretraining", best_step: int | None = None):
    """Plot ``history`` (one row per step: ``step``, ``loss``, one column per loss part,
    ``lr``, ``temperature`` optional; ``val_loss``, ``val_<part>`` where validated) and write
    it to ``path`` (PNG, atomically) if given. ``best_step``: the step of the model kept,
    marked on the loss panels.

    Returns the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [c for c in history.columns if c not in ("step", "lr", "temperature", "epoch")
             and not c.startswith("val_")]
    extras = [c for c in ("lr", "temperature") if c in history.columns]
    panels = parts + extras
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    window = max(1, len(history) // 50)
    for ax, name in zip(axes.flat, panels):
        values = history[name].to_numpy(np.float64)
        smoothed = name in parts and window > 1
        ax.plot(history["step"], values, lw=0.6 if smoothed else 1.0,
                alpha=0.4 if smoothed else 1.0, color="C0", label="training")
        if smoothed:
            ax.plot(history["step"], smooth(values, window), lw=1.5, color="C1",
                    label=f"training, mean of {window}")
        validated = history[["step", f"val_{name}"]].dropna() if f"val_{name}" in history else None
        if validated is not None and len(validated):
            ax.plot(validated["step"], validated[f"val_{name}"], marker="o", ms=3.5, lw=1.2,
                    color="C3", label="validation")
            if best_step is not None:
                ax.axvline(best_step, color="0.4", ls=":", lw=1.0, label=f"kept: step {best_step}")
        if smoothed or (validated is not None and len(validated)):
            ax.legend(fontsize=7, frameon=False)
        ax.set_title("total" if name == "loss" else name, fontsize=10)
        ax.set_xlabel("step")
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, close=False)  # the caller gets the figure back
    return fig
