"""One sample's virtual stain images (``results/stain/{sample}/``): ``pastflow stain-images``.

Drawn from what ``pastflow stain`` wrote (:mod:`pastflow.stain.sample`), without scoring
anything again: each cell's level from ``cells.tsv.gz`` (``{marker}_predicted_level``), its
centre from the slide's patch store, the slide H-scores for the titles from ``hscores.tsv``.
Writes, atomically:

- ``virtual_{marker}.tif`` for each marker of ``stain.images``: tiled pyramidal TIFF at the
  patch store's resolution (:mod:`pastflow.stain.pyramid`);
- ``thumbnails.jpg``: H&E and virtual stains side by side, with the region grid (JPEG:
  a tissue image is ~8x smaller than as PNG, and the report embeds one per sample).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from pastflow.atomic import atomic_path
from pastflow.cores import read_core_map
from pastflow.errors import InputError
from pastflow.patches.reader import PatchStore
from pastflow.stain.io import read_unit_diameter
from pastflow.stain.panel import Marker
from pastflow.stain.pyramid import read_thumbnail_level, write_stain_pyramid
from pastflow.stain.render import VirtualStainTiles
from pastflow.stain.sample import StainOutputs, check_image_markers, read_annotations
from pastflow.stain.score import SLIDE

if TYPE_CHECKING:
    from pastflow.stain.settings import StainSettings

log = logging.getLogger(__name__)

FALLBACK_UNIT_UM = 10.0  # cell diameter when neither stain.unit_um nor the QC table gives one
THUMBNAIL_PX = 800  # longer side of the report thumbnails, about


def slide_readout(hscores: pd.DataFrame) -> dict[str, float]:
    """Marker -> the slide's H-score from predicted levels over all its cells (the readout),
    not the rows over the cells with measured expression that a QC table adds."""
    rows = hscores[(hscores["region"] == SLIDE) & (hscores["source"] == "predicted")
                   & (hscores["cells"] == "all")]
    return dict(zip(rows["marker"], rows["hscore"]))


def level_column(marker: str) -> str:
    """The ``cells.tsv.gz`` column of a marker's level binned from predicted expression."""
    return f"{marker}_predicted_level"


def read_cell_levels(path: str | Path, markers: Sequence[str]) -> pd.DataFrame:
    """``cell_id`` (str) and the predicted level of each of ``markers`` that was scored
    (a marker without cut-offs or genes has no level column) from ``cells.tsv.gz``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "cells table (from pastflow stain) not found")
    wanted = {"cell_id", *map(level_column, markers)}
    try:
        cells = pd.read_csv(path, sep="\t", usecols=lambda c: c in wanted,
                            dtype={"cell_id": str}, keep_default_na=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(path, f"not a readable cells table ({err})") from None
    if "cell_id" not in cells:
        raise InputError(path, "cells table has no cell_id column")
    return cells


def read_slide_hscores(path: str | Path) -> pd.DataFrame:
    """``hscores.tsv`` of ``pastflow stain``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "H-score table (from pastflow stain) not found")
    table = pd.read_csv(path, sep="\t", dtype={"sample": str, "marker": str, "region": str,
                                               "source": str, "cells": str})
    missing = {"sample", "marker", "region", "source", "hscore"} - set(table.columns)
    if missing:
        raise InputError(path, f"H-score table lacks columns {sorted(missing)}")
    return table


def unit_diameter_um(settings: StainSettings, table_path: str | Path | None) -> float:
    """The stain blobs' diameter: ``stain.unit_um``, else the QC table's
    ``uns["pastflow"]["unit_diameter_um"]``, else :data:`FALLBACK_UNIT_UM`."""
    unit_um = settings.unit_um
    if unit_um is None and table_path is not None:
        unit_um = read_unit_diameter(table_path)
    return float(unit_um or FALLBACK_UNIT_UM)


def stain_images(cells_path: str | Path, hscores_path: str | Path, store_path: str | Path,
                 panel: Sequence[Marker], out_dir: str | Path, settings: StainSettings, *,
                 sample: str | None = None, table_path: str | Path | None = None,
                 regions_path: str | Path | None = None, cores_path: str | Path | None = None,
                 progress: bool = True) -> list[Path]:
    """Draw the virtual stains of ``settings.images`` and the thumbnails figure; returns the
    paths written (see module docstring).

    A marker to draw that was not scored (no cut-offs, or none of its genes predicted) is
    rendered as counterstain only, with a warning, so the expected files still appear.
    ``table_path``: the sample's QC table, read only for its unit diameter (when
    ``stain.unit_um`` is null). ``regions_path``: the annotated regions ``pastflow stain``
    scored instead of the grid, or ``cores_path`` the core map of a tissue microarray (the
    thumbnails then show no grid).
    """
    from pastflow.progress import progress_bar
    from pastflow.stain.plots import plot_thumbnails

    start = time.perf_counter()
    out = StainOutputs(Path(out_dir))
    images = list(settings.images)
    check_image_markers(panel, images)
    by_name = {m.name: m for m in panel}
    if regions_path is not None:
        read_annotations(regions_path)  # the file pastflow stain was given: checked, not used
    if cores_path is not None:
        read_core_map(cores_path)  # likewise
    hscores = read_slide_hscores(hscores_path)
    if sample is None:
        named = hscores["sample"].dropna().unique()
        sample = str(named[0]) if len(named) == 1 else Path(hscores_path).parent.name
    cells = read_cell_levels(cells_path, images)
    unit_um = unit_diameter_um(settings, table_path)
    store = PatchStore(store_path)
    try:
        rows = store.index_of(cells["cell_id"].tolist())
    except KeyError as err:
        raise InputError(store_path, f"{err.args[0]} (of {cells_path}): store and cells table "
                                     "come from different runs?") from None
    centers = store.centers[rows]

    out.out_dir.mkdir(parents=True, exist_ok=True)
    h, w = store.image.shape[1:]
    crop = (store.margin, store.margin, w - 2 * store.margin, h - 2 * store.margin)
    stains = {}
    for name in progress_bar(images, desc=f"{sample} virtual stains", unit="image",
                             enabled=progress):
        if level_column(name) in cells:
            marker_levels = cells[level_column(name)].to_numpy()
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
    with atomic_path(out.thumbnails) as tmp:
        plot_thumbnails(thumb, stains, slide_readout(hscores),
                        extent_um=(crop[2] * store.mpp, crop[3] * store.mpp),
                        grid_um=None if regions_path or cores_path else settings.grid_um,
                        title=sample, path=tmp)
    log.info("%s: %d virtual stains of %d cells in %.1f s", sample, len(images), len(cells),
             time.perf_counter() - start)
    return [out.image(name) for name in images] + [out.thumbnails]
