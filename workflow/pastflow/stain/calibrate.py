"""Cut-offs of the 0 / 1+ / 2+ / 3+ bins, calibrated on the training slides: one set for
measured scores, one for predicted scores (``applies_to`` in ``cutoffs.tsv``).

**Measured** cut-offs, per marker, on the pooled per-cell scores (mean log1p-normalised
expression of the marker's genes) of every training cell:

- ``cut_1`` (negative | positive): Otsu's threshold of the scores. Marker genes are expressed
  by a cell type or not at all, so the scores are bimodal (a near-zero mode of cells that do not
  express the marker, a high mode of those that do); Otsu finds the valley between the modes
  without a tuning constant, where a fixed quantile would presume the positive fraction.
- ``cut_2``, ``cut_3``: the tertiles of the positive cells' scores (cells above ``cut_1``). A
  pathologist's 1+ / 2+ / 3+ are intensity tiers *within* the stained cells; tertiles make each
  tier a third of the training positives, so H-scores use their whole 0-300 range.

**Predicted** cut-offs, on the model's predictions for the same training cells: a regression
head shrinks towards the mean, so measured cut-offs applied to predictions under-call strong
cells and mis-call weak ones. Each predicted cut-off is the quantile of the cells' predicted
scores at the fraction of those cells whose measured level lies below it
(:func:`calibrate_predicted`): on the training cells the virtual stain then calls as many
cells 0, 1+, 2+ and 3+ as the measured one, whatever the scale the head predicts on.

Cut-offs written in the panel file win over calibration (``source = panel``, both rows). A
panel marker with ``calibration: within_slide`` gets rows of ``source = within_slide`` and no
numbers: ``pastflow stain`` applies the measured rule to each slide's own scores (predicted
and measured each on their own) and writes the cut-offs it used beside the H-scores.
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
from pastflow.stain.score import bin_levels

log = logging.getLogger(__name__)

CUTOFF_COLUMNS = ("marker", "cut_1", "cut_2", "cut_3", "source", "applies_to")
# Columns a cut-offs table must have; one without ``applies_to`` (written before it) applies
# each row to both.
REQUIRED_COLUMNS = CUTOFF_COLUMNS[:5]
APPLIES_TO = ("measured", "predicted")
WITHIN_SLIDE = "within_slide"
CUTS = ["cut_1", "cut_2", "cut_3"]
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


def calibrate_predicted(predicted: np.ndarray, measured_levels: np.ndarray
                        ) -> tuple[float, float, float]:
    """``(cut_1, cut_2, cut_3)`` for predicted scores ``(n,)`` of cells whose measured levels
    (ints 0..3, same cells, same order) are known: ``cut_k`` is the quantile of ``predicted``
    at the fraction of cells measured below level ``k``, so binning the predictions calls each
    level as often as the measurement does. Ties are nudged apart by :data:`TIE_STEP`."""
    predicted = np.asarray(predicted, np.float64)
    levels = np.asarray(measured_levels)
    below = [float(np.mean(levels < k)) for k in (1, 2, 3)]
    cut_1, cut_2, cut_3 = (float(q) for q in np.quantile(predicted, below))
    cut_2 = max(cut_2, cut_1 + TIE_STEP)
    cut_3 = max(cut_3, cut_2 + TIE_STEP)
    return cut_1, cut_2, cut_3


def _cell_ids(table) -> np.ndarray:
    ids = table.obs["cell_id"] if "cell_id" in table.obs else table.obs_names
    return np.asarray(ids, dtype=str)


def calibrate_cutoffs(tables: Sequence, panel: Sequence[Marker],
                      sources: Sequence[str] | None = None,
                      predictions: Sequence | None = None,
                      prediction_sources: Sequence[str] | None = None) -> pd.DataFrame:
    """Cut-offs of every panel marker, one row for measured and one for predicted scores
    (``applies_to``): the panel's own, else calibrated on the training slides.

    ``tables``: QC AnnData objects (``X`` log1p-normalised) of the training slides; a marker
    is calibrated on the tables holding at least one of its genes. ``predictions``: the
    predict stage's tables of the same slides (same order; cells joined on ``cell_id``); the
    predicted rows are fitted on them (:func:`calibrate_predicted`). Without them the predicted
    rows repeat the measured cut-offs (``source`` says so). Returns :data:`CUTOFF_COLUMNS`;
    markers with neither panel cut-offs nor genes in any table are left out with a warning.

    Raises:
        InputError: ``predictions`` not one per table, or one sharing no cell with its table.
    """
    sources = list(sources) if sources is not None else [f"table {i}" for i in range(len(tables))]
    if predictions is not None and len(predictions) != len(tables):
        raise InputError(None, f"{len(predictions)} prediction tables for {len(tables)} QC "
                               "tables: give the predictions of the same training slides")
    prediction_sources = (list(prediction_sources) if prediction_sources is not None
                          else [f"prediction {i}" for i in range(len(predictions or []))])
    fitted = [m for m in panel if m.cutoffs is None and m.calibration == "training"]
    per_table = [marker_scores(t.X, t.var_names, fitted, src) for t, src in zip(tables, sources)]
    per_prediction = [marker_scores(p.X, p.var_names, fitted, src)
                      for p, src in zip(predictions or [], prediction_sources)]
    # Row of each prediction cell in its QC table (-1: the cell did not pass QC).
    matches = []
    for table, prediction, src in zip(tables, predictions or [], prediction_sources):
        rows = pd.Index(_cell_ids(table)).get_indexer(_cell_ids(prediction))
        if not (rows >= 0).any():
            raise InputError(src, "shares no cell_id with its QC table: predictions and tables "
                                  "of different slides or ingests?")
        matches.append(rows)
    rows = []
    for marker in panel:
        if marker.cutoffs is not None:
            rows += [(marker.name, *marker.cutoffs, "panel", a) for a in APPLIES_TO]
            continue
        if marker.calibration == WITHIN_SLIDE:
            rows += [(marker.name, np.nan, np.nan, np.nan, WITHIN_SLIDE, a) for a in APPLIES_TO]
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
        log.info("marker %s: measured cut-offs %.3f %.3f %.3f (%d of %d training cells "
                 "positive)", marker.name, *cuts, n_pos, scores.size)
        rows.append((marker.name, *cuts, f"calibrated on {len(pooled)} training slides",
                     "measured"))
        if predictions is None:
            log.warning("marker %s: no predictions of the training slides; predicted scores "
                        "get the measured cut-offs (predictions shrink: strong cells are "
                        "under-called)", marker.name)
            rows.append((marker.name, *cuts, "measured cut-offs (no predictions given)",
                         "predicted"))
            continue
        predicted, levels = [], []
        for scored, prediction, match in zip(per_table, per_prediction, matches):
            if marker.name not in scored or marker.name not in prediction:
                continue
            hit = match >= 0
            predicted.append(prediction[marker.name].to_numpy()[hit])
            levels.append(bin_levels(scored[marker.name].to_numpy()[match[hit]], cuts))
        if not predicted:
            log.warning("marker %s: the model predicts none of its genes; no virtual stain",
                        marker.name)
            continue
        n_slides = len(predicted)
        predicted, levels = np.concatenate(predicted), np.concatenate(levels)
        p_cuts = calibrate_predicted(predicted, levels)
        log.info("marker %s: predicted cut-offs %.3f %.3f %.3f (%d training cells)",
                 marker.name, *p_cuts, predicted.size)
        rows.append((marker.name, *p_cuts, f"fitted on the predictions for {predicted.size} "
                                           f"cells of {n_slides} training slides", "predicted"))
    return pd.DataFrame(rows, columns=list(CUTOFF_COLUMNS))


def read_cutoffs(path: str | Path) -> pd.DataFrame:
    """A cut-offs table (:data:`CUTOFF_COLUMNS`), checked; InputError naming the file. A
    table without ``applies_to`` (written before it) applies each row to both sources."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "cut-offs table not found")
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing columns {missing}")
    if "applies_to" not in table.columns:
        table = pd.concat([table.assign(applies_to=a) for a in APPLIES_TO], ignore_index=True)
    unknown = sorted(set(table["applies_to"].astype(str)) - set(APPLIES_TO))
    if unknown:
        raise InputError(path, f"applies_to {unknown} is not one of {', '.join(APPLIES_TO)}")
    cuts = table[CUTS].to_numpy(np.float64)
    fixed = (table["source"] != WITHIN_SLIDE).to_numpy()
    bad = fixed & ~(np.isfinite(cuts).all(axis=1) & (np.diff(cuts, axis=1) > 0).all(axis=1))
    if bad.any():
        raise InputError(path, f"cut-offs not three increasing numbers for marker(s) "
                               f"{table.loc[bad, 'marker'].tolist()}")
    duplicated = table.duplicated(["marker", "applies_to"])
    if duplicated.any():
        raise InputError(path, f"duplicate markers {table.loc[duplicated, 'marker'].tolist()}")
    return table


def cutoffs_for(table: pd.DataFrame, applies_to: str) -> pd.DataFrame:
    """The rows of a :func:`read_cutoffs` table for ``measured`` or ``predicted`` scores,
    indexed by marker (``cut_1..3``, ``source``)."""
    return table[table["applies_to"] == applies_to].set_index("marker")[CUTS + ["source"]]


def write_cutoffs(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
