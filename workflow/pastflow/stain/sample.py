"""One sample's virtual IHC (``results/stain/{sample}/``).

Writes, atomically:

- ``hscores.tsv``: :data:`~pastflow.stain.score.HSCORE_COLUMNS`, one row per marker x region x
  source x cells; region ``slide`` or a grid cell ``r{row}c{col}`` (or an annotated region);
  source ``predicted`` or ``measured``; cells ``all`` (every predicted cell: the virtual IHC
  readout, source ``predicted`` only) or ``measured`` (the predicted cells that also passed
  QC, scored both ways: the agreement check compares like with like);
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
from typing import Sequence

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.patches.reader import PatchStore
from pastflow.stain.calibrate import read_cutoffs
from pastflow.stain.io import read_cell_table
from pastflow.stain.panel import Marker, marker_scores
from pastflow.stain.pyramid import read_thumbnail_level, write_stain_pyramid
from pastflow.stain.render import VirtualStainTiles
from pastflow.stain.score import bin_levels, grid_regions, hscore_table

log = logging.getLogger(__name__)

DEFAULT_GRID_UM = 250.0  # a ~1 mm simulated slide -> a 4 x 4 grid
DEFAULT_MIN_REGION_CELLS = 20  # fewer cells give percentages too coarse to compare
DEFAULT_UNIT_UM = 10.0  # cell diameter when the QC table does not record one
THUMBNAIL_PX = 800  # longer side of the report thumbnails, about


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


def _levels(scores: pd.DataFrame, cutoffs: pd.DataFrame) -> pd.DataFrame:
    """``int8`` levels 0..3 of every scored marker (columns of ``scores``)."""
    cuts = cutoffs.set_index("marker")
    bounds = ["cut_1", "cut_2", "cut_3"]
    return pd.DataFrame({m: bin_levels(scores[m].to_numpy(), cuts.loc[m, bounds])
                         for m in scores.columns})


def stain_sample(prediction_path: str | Path, store_path: str | Path, cutoffs_path: str | Path,
                 panel: Sequence[Marker], out_dir: str | Path, *, sample: str | None = None,
                 table_path: str | Path | None = None, images: Sequence[str] = (),
                 grid_um: float = DEFAULT_GRID_UM,
                 min_region_cells: int = DEFAULT_MIN_REGION_CELLS,
                 regions_path: str | Path | None = None, unit_um: float | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Score, bin and render one sample; returns its H-score table (see module docstring).

    ``images``: markers to render as virtual stains (a marker that cannot be scored is
    rendered as counterstain only, with a warning, so the expected files still appear).
    ``regions_path``: optional annotated regions (TSV ``cell_id``, ``region``) used instead of
    the ``grid_um`` grid. ``unit_um``: cell (or spot / bin) diameter; default the QC table's
    ``uns["pastflow"]["unit_diameter_um"]``, else 10 um.
    """
    from tqdm import tqdm

    from pastflow.stain.plots import plot_thumbnails

    start = time.perf_counter()
    prediction_path, out = Path(prediction_path), StainOutputs(Path(out_dir))
    sample = sample or prediction_path.stem
    by_name = {m.name: m for m in panel}
    unknown = [m for m in images if m not in by_name]
    if unknown:
        raise InputError(None, f"virtual stain markers {unknown} are not in the panel "
                               f"({', '.join(by_name)})")
    predicted = read_cell_table(prediction_path, "prediction table")
    cutoffs = read_cutoffs(cutoffs_path)
    store = PatchStore(store_path)
    try:
        rows = store.index_of(predicted.obs["cell_id"].astype(str).tolist())
    except KeyError as err:
        raise InputError(store_path, f"{err.args[0]} (of {prediction_path}): store and "
                                     "prediction come from different ingests?") from None
    centers = store.centers[rows]
    xy_um = (centers - store.margin) * store.mpp

    scorable = [m for m in panel if m.name in set(cutoffs["marker"])]
    for m in panel:
        if m.name not in set(cutoffs["marker"]):
            log.warning("%s: marker %s has no cut-offs in %s; not scored", sample, m.name,
                        cutoffs_path)
    scores = marker_scores(predicted.X, predicted.var_names, scorable, str(prediction_path))
    levels = _levels(scores, cutoffs)

    if regions_path is not None:
        regions = read_annotations(regions_path).reindex(predicted.obs["cell_id"].astype(str))
        regions = regions.fillna("").to_numpy(dtype=object)
    else:
        regions = grid_regions(xy_um, grid_um)
    cells = pd.DataFrame({"cell_id": predicted.obs["cell_id"].astype(str).to_numpy(),
                          "x_um": xy_um[:, 0], "y_um": xy_um[:, 1], "region": regions})
    for m in scores.columns:
        cells[f"{m}_predicted_score"] = scores[m].to_numpy()
        cells[f"{m}_predicted_level"] = levels[m].to_numpy()
    tables = [hscore_table(levels, regions, sample=sample, source="predicted",
                           min_cells=min_region_cells)]

    if table_path is not None:
        measured = read_cell_table(table_path, "QC table")
        if unit_um is None:
            unit_um = measured.uns.get("pastflow", {}).get("unit_diameter_um")
        m_scores = marker_scores(measured.X, measured.var_names,
                                 [m for m in scorable if m.name in scores.columns], str(table_path))
        m_levels = _levels(m_scores, cutoffs)
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
                                       source=source, min_cells=min_region_cells,
                                       cells="measured"))
    unit_um = float(unit_um or DEFAULT_UNIT_UM)
    hscores = pd.concat(tables, ignore_index=True)

    # Virtual stains, then the thumbnails figure read back from their pyramids.
    out.out_dir.mkdir(parents=True, exist_ok=True)
    h, w = store.image.shape[1:]
    crop = (store.margin, store.margin, w - 2 * store.margin, h - 2 * store.margin)
    stains = {}
    for name in tqdm(images, desc=f"{sample} virtual stains", disable=not progress):
        if name in levels:
            marker_levels = levels[name].to_numpy()
        else:
            log.warning("%s: marker %s not scored; its virtual stain is counterstain only",
                        sample, name)
            marker_levels = np.zeros(len(cells), np.int8)
        source = VirtualStainTiles(store.image, centers, marker_levels,
                                   by_name[name].compartment, unit_um / 2 / store.mpp, crop=crop)
        write_stain_pyramid(out.image(name), source, store.mpp,
                            description=f"pastflow virtual IHC {name} of {sample}")
        stains[name] = read_thumbnail_level(out.image(name), min_side=THUMBNAIL_PX)
    # The store's own tissue thumbnail is 8 um/px, too coarse beside the stains: subsample
    # the H&E to about the stains' thumbnail size instead.
    step = max(1, max(crop[2], crop[3]) // THUMBNAIL_PX)
    thumb = store.image[:, crop[1]:crop[1] + crop[3]:step, crop[0]:crop[0] + crop[2]:step]
    thumb = np.ascontiguousarray(thumb.transpose(1, 2, 0))
    slide_rows = hscores[(hscores["region"] == "slide") & (hscores["source"] == "predicted")]
    with atomic_path(out.thumbnails) as tmp:
        plot_thumbnails(thumb, stains, dict(zip(slide_rows["marker"], slide_rows["hscore"])),
                        extent_um=(crop[2] * store.mpp, crop[3] * store.mpp),
                        grid_um=None if regions_path is not None else grid_um,
                        title=sample, path=tmp)
    with atomic_path(out.cells) as tmp:
        cells.to_csv(tmp, sep="\t", index=False, float_format="%.5g")
    with atomic_path(out.hscores) as tmp:
        hscores.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    log.info("%s: %d markers scored on %d cells, %d virtual stains in %.1f s", sample,
             scores.shape[1], len(cells), len(images), time.perf_counter() - start)
    return hscores
