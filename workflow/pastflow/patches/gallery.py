"""A figure of sampled patches with their centres marked: the check that patches sit on cells."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from pastflow.figures import save_figure
from pastflow.patches.reader import PatchStore

log = logging.getLogger(__name__)


def sample_cells(store: PatchStore, n: int, seed: int = 0) -> np.ndarray:
    """``n`` cell indices without replacement, tissue cells first; sorted ``int64 (<= n,)``."""
    rng = np.random.default_rng(seed)
    tissue = np.flatnonzero(store.in_tissue)
    other = np.flatnonzero(~store.in_tissue)
    picked = rng.permutation(tissue)[:n]
    if len(picked) < n:  # too few tissue cells: show tissue-free ones too (marked in red)
        picked = np.concatenate([picked, rng.permutation(other)[: n - len(picked)]])
    return np.sort(picked)


def save_gallery(
    store: PatchStore | str | Path,
    out_png: str | Path,
    *,
    n: int = 48,
    seed: int = 0,
    title: str | None = None,
    size: int | None = None,
    columns: int = 8,
) -> Path:
    """Save a grid of ``n`` seeded random patches, each centre marked by a small cross.

    Tissue-free cells get a red frame. ``title`` names the sample; the figure's title adds the
    resolution and patch size. ``size`` draws patches of that many px instead of the store's.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = store if isinstance(store, PatchStore) else PatchStore(store)
    size = store.patch_px if size is None else int(size)
    indices = sample_cells(store, n, seed)
    patches = store.read(indices, size=size)
    rows = max(1, math.ceil(len(indices) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(columns * 1.5, rows * 1.5 + 0.5), squeeze=False
    )
    centre = (size - 1) / 2
    arm = max(2.0, size / 12)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, index, patch in zip(axes.flat, indices, patches):
        ax.imshow(patch.transpose(1, 2, 0), interpolation="nearest")
        ax.plot([centre - arm, centre + arm], [centre, centre], color="lime", lw=0.8)
        ax.plot([centre, centre], [centre - arm, centre + arm], color="lime", lw=0.8)
        ax.set_title(str(store.cell_ids[index])[:18], fontsize=6.5, pad=1.5)
        if not store.in_tissue[index]:
            ax.add_patch(plt.Rectangle((0, 0), size - 1, size - 1, fill=False, ec="red", lw=1.5))
    name = title or Path(store.attrs["source_slide"]).name
    fig.suptitle(
        f"{name}: {len(indices)} of {len(store)} {store.unit}s, {size} px at {store.mpp:.3f} "
        f"um/px ({size * store.mpp:.0f} um); + = {store.unit} centre, red = tissue-free",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97), pad=0.3)
    out_png = save_figure(fig, out_png)
    log.info("%s: gallery of %d patches", out_png, len(indices))
    return out_png
