"""Cut-offs of the 0 / 1+ / 2+ / 3+ bins, calibrated on measured expression of training slides.

The rule, per marker, on the pooled per-cell scores (mean log1p-normalised expression of the
marker's genes) of every training cell:

- ``cut_1`` (negative | positive): Otsu's threshold of the scores. Marker genes are expressed
  by a cell type or not at all, so the scores are bimodal (a near-zero mode of cells that do not
  express the marker, a high mode of those that do); Otsu finds the valley between the modes
  without a tuning constant, where a fixed quantile would presume the positive fraction.
- ``cut_2``, ``cut_3``: the tertiles of the positive cells' scores (cells above ``cut_1``). A
  pathologist's 1+ / 2+ / 3+ are intensity tiers *within* the stained cells; tertiles make each
  tier a third of the training positives, so H-scores use their whole 0-300 range and the same
  cut-offs score predicted and measured expression alike.

Cut-offs written in the panel file win over calibration (``source = panel``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.stain.panel import Marker, marker_scores

log = logging.getLogger(__name__)

CUTOFF_COLUMNS = ("marker", "cut_1", "cut_2", "cut_3", "source")
# Fewer positive training cells than this give tertiles too noisy to trust: warn.
MIN_POSITIVE_CELLS = 30
TIE_STEP = 1e-4


def calibrate_marker(scores: np.ndarray) -> tuple[float, float, float]:
    """``(cut_1, cut_2, cut_3)`` for one marker from its measured per-cell scores ``(n,)``.

    Raises ValueError when the scores hold no positive cells (all equal).
    """
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size < 2 or scores.min() == scores.max():
        raise ValueError("all scores are equal: no positive cells to calibrate on")
    cut_1 = float(threshold_otsu(scores))
    positive = scores[scores > cut_1]
    cut_2, cut_3 = (float(q) for q in np.quantile(positive, [1 / 3, 2 / 3]))
    # Ties (e.g. single-gene markers whose counts take few values) must still give increasing
    # cut-offs; nudge by TIE_STEP (negligible in log1p units) rather than fail.
    cut_2 = max(cut_2, cut_1 + TIE_STEP)
    cut_3 = max(cut_3, cut_2 + TIE_STEP)
    return cut_1, cut_2, cut_3


def calibrate_cutoffs(tables: Sequence, panel: Sequence[Marker],
                      sources: Sequence[str] | None = None) -> pd.DataFrame:
    """Cut-offs of every panel marker: the panel's own, else calibrated on ``tables``.

    ``tables``: QC AnnData objects (``X`` log1p-normalised) of the training slides; a marker
    is calibrated on the tables holding at least one of its genes. Returns
    :data:`CUTOFF_COLUMNS`; markers with neither panel cut-offs nor genes in any table are
    left out with a warning.
    """
    sources = list(sources) if sources is not None else [f"table {i}" for i in range(len(tables))]
    per_table = [marker_scores(t.X, t.var_names, [m for m in panel if m.cutoffs is None], src)
                 for t, src in zip(tables, sources)]
    rows = []
    for marker in panel:
        if marker.cutoffs is not None:
            rows.append((marker.name, *marker.cutoffs, "panel"))
            continue
        pooled = [s[marker.name].to_numpy() for s in per_table if marker.name in s]
        if not pooled:
            log.warning("marker %s: none of its genes in any training table; not scored",
                        marker.name)
            continue
        scores = np.concatenate(pooled)
        try:
            cuts = calibrate_marker(scores)
        except ValueError as err:
            log.warning("marker %s: %s; not scored", marker.name, err)
            continue
        n_pos = int((scores > cuts[0]).sum())
        if n_pos < MIN_POSITIVE_CELLS:
            log.warning("marker %s: only %d positive training cells; its 2+/3+ cut-offs are "
                        "noisy (set cutoffs in the panel to fix them)", marker.name, n_pos)
        log.info("marker %s: cut-offs %.3f %.3f %.3f (%d of %d training cells positive)",
                 marker.name, *cuts, n_pos, scores.size)
        rows.append((marker.name, *cuts, f"calibrated on {len(pooled)} training slides"))
    return pd.DataFrame(rows, columns=list(CUTOFF_COLUMNS))


def read_cutoffs(path: str | Path) -> pd.DataFrame:
    """A cut-offs table (:data:`CUTOFF_COLUMNS`), checked; InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "cut-offs table not found")
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in CUTOFF_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing columns {missing}")
    cuts = table[["cut_1", "cut_2", "cut_3"]].to_numpy(np.float64)
    bad = ~(np.isfinite(cuts).all(axis=1) & (np.diff(cuts, axis=1) > 0).all(axis=1))
    if bad.any():
        raise InputError(path, f"cut-offs not three increasing numbers for marker(s) "
                               f"{table.loc[bad, 'marker'].tolist()}")
    if table["marker"].duplicated().any():
        duplicated = table.loc[table["marker"].duplicated(), "marker"].tolist()
        raise InputError(path, f"duplicate markers {duplicated}")
    return table


def write_cutoffs(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
