"""One sample's virtual IHC levels and H-scores (``results/stain/{sample}/``): ``pastflow stain``.

Writes, atomically:

- ``hscores.tsv``: :data:`~pastflow.stain.score.HSCORE_COLUMNS`, one row per marker x region x
  source x cells; region ``slide`` or a grid cell ``r{row}c{col}`` (or an annotated region);
  source ``predicted`` or ``measured``; cells ``all`` (every predicted cell: the virtual IHC
  readout, source ``predicted`` only) or ``measured`` (the predicted cells that also passed
  QC, scored both ways: the agreement check compares like with like); then the calibration
  each row was binned with: ``cut_1``, ``cut_2``, ``cut_3`` and ``calibration`` (where they
  come from: the ``source`` of ``cutoffs.tsv`` for that marker and source, or the slide's own
  fit for a ``within_slide`` marker);
- ``cells.tsv.gz``: one row per predicted cell: ``cell_id``, ``x_um``, ``y_um`` (slide microns),
  ``region``, and per marker ``{marker}_predicted_score`` / ``_level`` and, when measured,
  ``{marker}_measured_score`` / ``_level`` (empty where the cell did not pass QC);
- ``virtual_{marker}.tif`` for each requested marker: tiled pyramidal TIFF at the patch
  store's resolution (:mod:`pastflow.stain.pyramid`);
- ``thumbnails.jpg``: H&E and virtual stains side by side, with the region grid (JPEG:
  a tissue image is ~8x smaller than as PNG, and the report embeds one per sample).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.cores import read_core_map
from pastflow.errors import InputError
from pastflow.patches.reader import PatchStore
from pastflow.stain.calibrate import (CUTS, WITHIN_SLIDE, calibrate_marker, cutoffs_for,
                                      read_cutoffs)
from pastflow.stain.io import read_cell_table
from pastflow.stain.panel import Marker, marker_scores
from pastflow.stain.score import (HSCORE_COLUMNS, SLIDE, bin_levels, grid_regions,
                                  hscore_table)

if TYPE_CHECKING:
    from pastflow.stain.settings import StainSettings

log = logging.getLogger(__name__)

# hscores.tsv: the H-score contract, then the calibration each row was binned with.
CALIBRATION_COLUMNS = ("cut_1", "cut_2", "cut_3", "calibration")
# ...and what each row's region is: the whole slide, a grid cell or annotated region, or a
# tissue-microarray core (the agreement check reports each level on its own).
LEVEL_COLUMN = "level"
HSCORE_FILE_COLUMNS = HSCORE_COLUMNS + CALIBRATION_COLUMNS + (LEVEL_COLUMN,)


@dataclass(frozen=True)
class StainOutputs:
    """Paths of one sample's stain outputs inside ``out_dir``."""

    out_dir: Path

    @property
    def hscores(self) -> Path:
        return self.out_dir / "hscores.tsv"

    @property
    def cells(self) -> Path:
        return self.out_dir / "cells.tsv.gz"

    @property
    def thumbnails(self) -> Path:
        return self.out_dir / "thumbnails.jpg"

    def image(self, marker: str) -> Path:
        return self.out_dir / f"virtual_{marker}.tif"


def read_annotations(path: str | Path) -> pd.Series:
    """An annotated-regions table (TSV with ``cell_id`` and ``region``) -> region by cell id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "regions table not found")
    table = pd.read_csv(path, sep="\t", dtype=str)
    if not {"cell_id", "region"} <= set(table.columns):
        raise InputError(path, "expected columns cell_id and region")
    if table["cell_id"].duplicated().any():
        raise InputError(path, "a cell_id appears more than once")
    if (table["region"] == "slide").any():
        raise InputError(path, "'slide' is reserved for the whole slide; rename that region")
    return table.set_index("cell_id")["region"]


def check_image_markers(panel: Sequence[Marker], images: Sequence[str]) -> None:
    """InputError unless every marker to draw (``stain.images``) is in the panel."""
    names = [m.name for m in panel]
    unknown = [m for m in images if m not in names]
    if unknown:
        raise InputError(None, f"virtual stain markers {unknown} (stain.images) are not in the "
                               f"panel ({', '.join(names)})")


def _levels(scores: pd.DataFrame, cutoffs: pd.DataFrame, source: str
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``int8`` levels 0..3 of every scored marker (columns of ``scores``) with the cut-offs of
    ``cutoffs`` (:func:`~pastflow.stain.calibrate.cutoffs_for`), and the calibration used:
    ``marker, source, cut_1..3, calibration``. A ``within_slide`` marker is fitted here, on
    these scores; constant scores leave every cell 0 (no cut-offs)."""
    levels, used = {}, []
    for m in scores.columns:
        values = scores[m].to_numpy()
        cuts, origin = cutoffs.loc[m, CUTS].to_numpy(np.float64), str(cutoffs.loc[m, "source"])
        if origin == WITHIN_SLIDE:
            try:
                cuts = np.array(calibrate_marker(values))
                origin = f"{WITHIN_SLIDE}: fitted on this slide's {len(values)} {source} scores"
            except ValueError:
                cuts = np.full(3, np.nan)
                origin = f"{WITHIN_SLIDE}: {source} scores constant on this slide; all 0"
        levels[m] = (bin_levels(values, cuts) if np.isfinite(cuts).all()
                     else np.zeros(len(values), np.int8))
        used.append({"marker": m, "source": source, **dict(zip(CUTS, cuts)),
                     "calibration": origin})
    return pd.DataFrame(levels), pd.DataFrame(used, columns=["marker", "source", *CUTS,
                                                               "calibration"])


def stain_sample(prediction_path: str | Path, store_path: str | Path, cutoffs_path: str | Path,
                 panel: Sequence[Marker], out_dir: str | Path, settings: StainSettings, *,
                 sample: str | None = None, table_path: str | Path | None = None,
                 regions_path: str | Path | None = None,
                 cores_path: str | Path | None = None) -> pd.DataFrame:
    """Score and bin one sample; write ``hscores.tsv`` and ``cells.tsv.gz`` into ``out_dir``
    and return the H-score table (see module docstring).

    ``settings``: ``grid_um`` and ``min_region_cells`` shape the regions; ``images`` is only
    checked against the panel here (a bad marker stops this job, before anything is
    written, rather than the later ``stain-images`` one). ``regions_path``: optional
    annotated regions (TSV ``cell_id``, ``region``) used instead of the grid. ``cores_path``:
    a tissue microarray's core map (:mod:`pastflow.cores`): each core is a region, a cell
    outside every core is in none.
    """
    start = time.perf_counter()
    prediction_path, out = Path(prediction_path), StainOutputs(Path(out_dir))
    sample = sample or prediction_path.stem
    check_image_markers(panel, settings.images)
    predicted = read_cell_table(prediction_path, "prediction table")
    cutoffs = read_cutoffs(cutoffs_path)
    predicted_cuts, measured_cuts = (cutoffs_for(cutoffs, a) for a in ("predicted", "measured"))
    store = PatchStore(store_path)
    try:
        rows = store.index_of(predicted.obs["cell_id"].astype(str).tolist())
    except KeyError as err:
        raise InputError(store_path, f"{err.args[0]} (of {prediction_path}): store and "
                                     "prediction come from different ingests?") from None
    xy_um = (store.centers[rows] - store.margin) * store.mpp

    scorable = [m for m in panel if m.name in predicted_cuts.index]
    for m in panel:
        if m.name not in predicted_cuts.index:
            log.warning("%s: marker %s has no cut-offs for predictions in %s; not scored",
                        sample, m.name, cutoffs_path)
    scores = marker_scores(predicted.X, predicted.var_names, scorable, str(prediction_path))
    levels, calibration = _levels(scores, predicted_cuts, "predicted")

    if regions_path is not None and cores_path is not None:
        raise InputError(regions_path, "give annotated regions or a core map, not both")
    if cores_path is not None:
        regions = read_core_map(cores_path).assign(*np.asarray(store.xy_level0)[rows].T)
        if not (regions != "").any():
            raise InputError(cores_path, f"no cell of {sample} lies in any core; are the "
                                         "centres in level-0 pixels of this sample's H&E?")
    elif regions_path is not None:
        regions = read_annotations(regions_path).reindex(predicted.obs["cell_id"].astype(str))
        regions = regions.fillna("").to_numpy(dtype=object)
    else:
        regions = grid_regions(xy_um, settings.grid_um)
    cells = pd.DataFrame({"cell_id": predicted.obs["cell_id"].astype(str).to_numpy(),
                          "x_um": xy_um[:, 0], "y_um": xy_um[:, 1], "region": regions})
    for m in scores.columns:
        cells[f"{m}_predicted_score"] = scores[m].to_numpy()
        cells[f"{m}_predicted_level"] = levels[m].to_numpy()
    tables = [hscore_table(levels, regions, sample=sample, source="predicted",
                           min_cells=settings.min_region_cells)]

    if table_path is not None:
        measured = read_cell_table(table_path, "QC table")
        m_scores = marker_scores(measured.X, measured.var_names,
                                 [m for m in scorable if m.name in scores.columns
                                  and m.name in measured_cuts.index], str(table_path))
        m_levels, m_calibration = _levels(m_scores, measured_cuts, "measured")
        calibration = pd.concat([calibration, m_calibration], ignore_index=True)
        m_ids = measured.obs["cell_id"].astype(str)
        position = pd.Series(np.arange(len(m_ids)), index=m_ids).reindex(cells["cell_id"])
        hit = position.notna().to_numpy()
        where = position.to_numpy()[hit].astype(np.int64)
        log.info("%s: %d of %d measured cells are among the %d predicted", sample, int(hit.sum()),
                 len(m_ids), len(cells))
        for m in m_scores.columns:
            score = np.full(len(cells), np.nan, np.float32)
            score[hit] = m_scores[m].to_numpy()[where]
            level = pd.array(np.full(len(cells), pd.NA), dtype="Int8")
            level[hit] = m_levels[m].to_numpy()[where]
            cells[f"{m}_measured_score"] = score
            cells[f"{m}_measured_level"] = level
        # Measured and predicted H-scores over the same cells (those that passed QC and were
        # predicted): QC drops low-count cells (a quarter of Visium HD bins), and counting
        # them on one side only would bias the comparison.
        matched = m_levels.iloc[where].reset_index(drop=True)
        for source, table in (("measured", matched),
                              ("predicted", levels[list(matched.columns)][hit])):
            tables.append(hscore_table(table.reset_index(drop=True), regions[hit], sample=sample,
                                       source=source, min_cells=settings.min_region_cells,
                                       cells="measured"))
    hscores = pd.concat(tables, ignore_index=True).merge(
        calibration, on=["marker", "source"], how="left")
    hscores[LEVEL_COLUMN] = np.where(hscores["region"] == SLIDE, SLIDE,
                                     "core" if cores_path is not None else "region")
    hscores = hscores[list(HSCORE_FILE_COLUMNS)]

    out.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.cells) as tmp:
        cells.to_csv(tmp, sep="\t", index=False, float_format="%.5g")
    with atomic_path(out.hscores) as tmp:
        hscores.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    log.info("%s: %d markers scored on %d cells in %.1f s", sample, scores.shape[1], len(cells),
             time.perf_counter() - start)
    return hscores
