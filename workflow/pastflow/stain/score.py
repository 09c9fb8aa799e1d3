"""Per-cell IHC levels (0 / 1+ / 2+ / 3+), regions, and H-scores.

H-score (McCarty et al. 1985): ``1 x %1+ + 2 x %2+ + 3 x %3+``, from 0 (all negative) to 300
(all 3+); % positive = ``%1+ + %2+ + %3+``. Percentages are over the cells of a region.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

HSCORE_COLUMNS = ("sample", "marker", "region", "source", "cells", "n_cells", "pct_0",
                  "pct_1", "pct_2", "pct_3", "pct_positive", "hscore")
SLIDE = "slide"


def bin_levels(scores: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """``int8 (n,)`` levels 0..3: the number of ``cutoffs`` (increasing) a score exceeds.

    A score equal to a cut-off stays below it (so a score of 0 with ``cut_1 = 0`` is
    negative); NaN scores get level 0.
    """
    cutoffs = np.asarray(cutoffs, np.float64)
    if cutoffs.shape != (3,) or not np.all(np.diff(cutoffs) > 0):
        raise ValueError(f"cutoffs must be three increasing numbers, got {cutoffs.tolist()}")
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    return np.searchsorted(cutoffs, scores, side="left").astype(np.int8)


def grid_regions(xy_um: np.ndarray, grid_um: float) -> np.ndarray:
    """Grid-cell ids ``r{row}c{col}`` (1-based, from the slide's top-left) of points ``(n, 2)``
    ``[x, y]`` in microns, for square regions ``grid_um`` microns wide."""
    if grid_um <= 0:
        raise ValueError(f"grid_um must be positive, got {grid_um}")
    cells = np.floor(np.asarray(xy_um, np.float64) / grid_um).astype(np.int64) + 1
    return np.char.add(np.char.add("r", cells[:, 1].astype(str)),
                       np.char.add("c", cells[:, 0].astype(str)))


def level_percentages(levels: np.ndarray) -> dict[str, float]:
    """``n_cells``, ``pct_0..3``, ``pct_positive`` and ``hscore`` of ``levels`` (ints 0..3)."""
    levels = np.asarray(levels)
    n = levels.size
    if n == 0:
        pct = np.full(4, np.nan)
    else:
        pct = 100.0 * np.bincount(levels.astype(np.int64), minlength=4)[:4] / n
    return {"n_cells": n, "pct_0": pct[0], "pct_1": pct[1], "pct_2": pct[2], "pct_3": pct[3],
            "pct_positive": pct[1:].sum(), "hscore": float(pct @ np.arange(4))}


def hscore_table(levels: pd.DataFrame, regions: np.ndarray | None, *, sample: str, source: str,
                 min_cells: int = 1, cells: str = "all") -> pd.DataFrame:
    """H-scores per marker, for the whole slide and each region with >= ``min_cells`` cells.

    ``levels``: ``(n_cells, n_markers)`` int levels, one column per marker; ``regions``: ``(n,)``
    region id per cell (None or empty strings = no region). Returns :data:`HSCORE_COLUMNS`
    with ``source`` and ``cells`` (which cells were scored: ``all`` or ``measured``) as given.
    """
    rows = []
    groups: list[tuple[str, np.ndarray]] = [(SLIDE, np.arange(len(levels)))]
    if regions is not None:
        regions = np.asarray(regions, dtype=object)
        named = pd.notna(regions) & (regions != "")
        names, inverse, counts = np.unique(regions[named].astype(str), return_inverse=True,
                                           return_counts=True)
        # Each region's cells (ascending) from one sort: comparing every cell with every
        # region name grows with cells x regions, and a whole slide has thousands of regions.
        members = np.split(np.flatnonzero(named)[np.argsort(inverse, kind="stable")],
                           np.cumsum(counts)[:-1])
        groups += [(name, rows) for name, rows, n in zip(names, members, counts)
                   if n >= min_cells]
    for marker in levels.columns:
        values = levels[marker].to_numpy()
        for region, members in groups:
            rows.append({"sample": sample, "marker": marker, "region": region, "source": source,
                         "cells": cells, **level_percentages(values[members])})
    return pd.DataFrame(rows, columns=list(HSCORE_COLUMNS))
