"""Legacy Spatial Transcriptomics (Ståhl et al. 2016; the HER2ST layout, Andersson et al. 2021).

Files:

- counts ``<S>.tsv(.gz)``: rows are spots named ``"{x}x{y}"`` by array position, columns gene
  symbols, first column the spot id;
- spot selection ``<S>_selection.tsv``: columns ``x, y`` (array position), ``new_x, new_y``
  (the position refined against the fiducials), ``pixel_x, pixel_y`` (spot centre on the
  H&E), ``selected`` (1 = under the tissue);
- the full-resolution H&E (JPEG, usually without a resolution).

Spots are kept when selected and present in the counts. Vendor space = the H&E pixels
(identity ``vendor_to_he``). The resolution is fitted from the spot pitch: on the ST array,
neighbouring spots are 200 um apart centre to centre (100 um spots), so a least-squares affine
from array coordinates (``new_x, new_y`` when present) to pixels gives
``mpp = 200 / sqrt(|det|)`` (~0.69 um/px on the HER2ST sections).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.errors import InputError
from pastflow.ingest.common import (
    SampleParts,
    affine_scale,
    check_in_image,
    choose_mpp,
    fit_affine,
    looks_like_counts,
)
from pastflow.technologies import REGISTRY

log = logging.getLogger(__name__)

SPOT_DIAMETER_UM = REGISTRY["legacy_st"].unit_diameter_um
SPOT_PITCH_UM = 200.0  # centre-to-centre distance of neighbouring array positions
SELECTION_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
MAX_FIT_RMS_PITCH = 0.25  # spots further than this (x pitch) off the fitted grid: not an ST array


def read_selection(path: str | Path) -> pd.DataFrame:
    """The spot selection table, only selected spots, with a ``spot_id`` column ``"{x}x{y}"``."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable spot selection TSV ({err})") from err
    missing = [c for c in SELECTION_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a spot selection needs "
                               f"{', '.join(SELECTION_COLUMNS)} (and 'selected')")
    if "selected" in table.columns:
        table = table[pd.to_numeric(table["selected"], errors="coerce") == 1]
    if table.empty:
        raise InputError(path, "no selected spots")
    for column in SELECTION_COLUMNS:  # unselected spots may lack values; selected ones may not
        bad = ~np.isfinite(pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64))
        if bad.any():
            raise InputError(path, f"column '{column}': {int(bad.sum())} selected spot(s) with a "
                                   f"missing, non-numeric or infinite value (first on line "
                                   f"{int(table.index[np.argmax(bad)]) + 2})")
    table = table.copy()
    table["spot_id"] = table["x"].astype(int).astype(str) + "x" + table["y"].astype(int).astype(str)
    if table["spot_id"].duplicated().any():
        first = table.loc[table["spot_id"].duplicated(), "spot_id"].iloc[0]
        raise InputError(path, f"duplicate array positions, e.g. {first}")
    return table.set_index("spot_id")


def read_st_counts(path: str | Path) -> pd.DataFrame:
    """Spots x genes counts, index = ``"{x}x{y}"`` spot ids."""
    path = Path(path)
    try:
        counts = pd.read_csv(path, sep="\t", index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise InputError(path, f"not a readable counts TSV ({err})") from err
    if counts.shape[1] == 0 or not all(np.issubdtype(t, np.number) for t in counts.dtypes):
        raise InputError(path, "expected spots as rows, gene symbols as columns and numeric counts")
    counts.index = counts.index.astype(str)
    return counts


def fit_st_mpp(selection: pd.DataFrame, source: str | Path) -> tuple[float, float]:
    """``(um per H&E px, rms residual in px)`` from spot pixel positions vs array positions."""
    cols = ["new_x", "new_y"] if {"new_x", "new_y"} <= set(selection.columns) else ["x", "y"]
    if len(selection) < 3:
        raise InputError(source, "fewer than 3 spots: cannot fit the spot pitch")
    matrix, rms = fit_affine(selection[cols].to_numpy(np.float64),
                             selection[["pixel_x", "pixel_y"]].to_numpy(np.float64))
    px_per_pitch = affine_scale(matrix)
    if px_per_pitch <= 0 or rms > MAX_FIT_RMS_PITCH * px_per_pitch:
        raise InputError(source, f"spot pixel positions do not follow the array grid (rms {rms:.1f} px "
                                 f"for a pitch of {px_per_pitch:.1f} px)")
    return SPOT_PITCH_UM / px_per_pitch, rms


def read_legacy_st(counts_path: str | Path, image: str | Path, selection_path: str | Path) -> SampleParts:
    """An ST section: counts, spot selection, H&E."""
    from pastflow.slide import open_slide

    counts_path, image, selection_path = Path(counts_path), Path(image), Path(selection_path)
    selection = read_selection(selection_path)
    counts = read_st_counts(counts_path)
    spots = selection.index.intersection(counts.index, sort=False)
    if len(spots) == 0:
        raise InputError(counts_path, f"no spot id matches the selection {selection_path.name} "
                                      f"(counts rows look like {list(counts.index[:3])}, "
                                      f"selection like {list(selection.index[:3])})")
    if len(spots) < len(selection):
        log.warning("%s: %d of %d selected spots have no counts row; dropped", counts_path.name,
                    len(selection) - len(spots), len(selection))
    selection, counts = selection.loc[spots], counts.loc[spots]
    fitted_mpp, rms = fit_st_mpp(selection, selection_path)
    with open_slide(image) as slide:
        file_mpp, size = slide.mpp, slide.level_dimensions[0]
    xy = selection[["pixel_x", "pixel_y"]].to_numpy(np.float64)
    check_in_image(xy, size, selection_path, what="spots")
    mpp, mpp_source = choose_mpp(file_mpp, fitted_mpp, image, "spot pitch fit")
    var = pd.DataFrame(index=pd.Index(counts.columns.astype(str)))
    obs = selection[[c for c in ("x", "y", "new_x", "new_y") if c in selection.columns]].rename(
        columns={"x": "array_x", "y": "array_y", "new_x": "array_x_refined", "new_y": "array_y_refined"})
    return SampleParts(
        counts=sparse.csr_matrix(counts.to_numpy(np.float32)), var=var, cell_ids=spots.to_numpy(),
        xy_vendor=xy,
        vendor_to_he=np.eye(3), vendor_space="fullres_pixels", slide_path=image, mpp=mpp,
        unit_diameter_um=SPOT_DIAMETER_UM, obs=obs, x_is_counts=looks_like_counts(counts.to_numpy()),
        uns={"mpp_source": mpp_source, "spot_pitch_um": SPOT_PITCH_UM, "pitch_fit_rms_px": rms,
             "fitted_mpp": fitted_mpp, "selection_path": str(selection_path.resolve())})
