"""HEST-1k samples, in the layout HEST distributes (:mod:`pastflow.hest_layout`).

Sheet: ``data`` = the sample's ``st/<id>.h5ad``, ``image`` = ``wsis/<id>.tif``; the root is
the h5ad's grandparent and ``metadata/<id>.json`` beside ``st/`` is required.

What HEST stores (read from the HEST library, ``hest.readers`` / ``hest.HESTData``):

- ``st/<id>.h5ad``: ``X`` raw counts; ``obsm["spatial"]`` the centre of each row in
  full-resolution pixels of the WSI (x, y), also ``obs`` ``pxl_col_in_fullres`` /
  ``pxl_row_in_fullres``. Visium and ST rows are the spots. Visium HD and Xenium rows are
  HEST's pseudo-spots: squares laid edge to edge on the image axes (16 um bins pooled into
  128 um squares, Xenium transcripts pooled into 100 um squares).
- ``wsis/<id>.tif``: the full-resolution H&E, its pixel size in the resolution tags.
- ``metadata/<id>.json``: ``st_technology``; ``pixel_size_um_estimated`` (um/px, what HEST
  uses and writes into the TIFF) and ``pixel_size_um_embedded``; ``spot_diameter`` and
  ``inter_spot_dist`` (um; for Visium HD they give the 2 um barcode square, not the pooled
  rows, and Xenium has none); ``fullres_px_width`` / ``_height`` (px of the saved WSI).

Units: a Visium or ST spot has the metadata's ``spot_diameter`` (else the technology's
nominal one, said in ``uns``); a pseudo-spot's side is the pitch of its grid, measured.
Xenium samples with ``xenium_seg/`` and ``transcripts/`` are read as cells
(:mod:`pastflow.ingest.hest_cells`) unless ``ingest.hest.xenium_cells`` is false.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from pastflow.errors import InputError
from pastflow.hest_layout import POOLED, SPOT_UM, ST_TECHNOLOGIES, XENIUM, HestPaths
from pastflow.ingest.common import SampleParts, check_in_image, choose_mpp, looks_like_counts
from pastflow.ingest.he_only import GIVEN_MPP
from pastflow.ingest.settings import HestSettings

log = logging.getLogger(__name__)

# Measured spot pitch this far from the metadata's inter_spot_dist: positions or mpp suspect.
PITCH_TOLERANCE = 0.1
KEEP_OBS = ("in_tissue", "array_row", "array_col")


def read_metadata(path: Path) -> dict:
    """``metadata/<id>.json`` as a dict, with a known ``st_technology``."""
    if not path.is_file():
        raise InputError(path, "HEST metadata not found: a HEST sample needs metadata/<id>.json "
                               "beside st/ (download it with the sample)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise InputError(path, "expected a JSON object of sample metadata")
    technology = _technology(meta.get("st_technology"))
    if technology is None:
        raise InputError(path, f"st_technology {meta.get('st_technology')!r} is not one HEST "
                               f"uses ({', '.join(ST_TECHNOLOGIES)})")
    return {**meta, "st_technology": technology}


def _technology(value) -> str | None:
    """HEST's technology name, matched without regard to case (HEST compares lower-cased)."""
    return next((t for t in ST_TECHNOLOGIES if str(value).strip().lower() == t.lower()), None)


def positive(meta: dict, key: str) -> float | None:
    """``meta[key]`` as a positive finite float, None when absent, null, NaN or not a number."""
    try:
        value = float(meta.get(key))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def image_scale(meta: dict, size: tuple[int, int], source: Path) -> float:
    """WSI pixels per full-resolution pixel: 1, unless the metadata's full-resolution size
    (``fullres_px_width`` / ``_height``) says the TIFF is a downsampled copy."""
    width, height = positive(meta, "fullres_px_width"), positive(meta, "fullres_px_height")
    if not width or abs(size[0] / width - 1) < 0.01:
        return 1.0
    scale = size[0] / width
    if height and abs(size[1] / height / scale - 1) > 0.01:
        raise InputError(source, f"the WSI is {size[0]} x {size[1]} px but the metadata's full "
                                 f"resolution is {width:.0f} x {height:.0f} px: not one scale")
    log.info("%s: the WSI is %.4g x the full resolution; positions scaled by it", source, scale)
    return scale


def hest_mpp(meta: dict, file_mpp: float | None, scale: float, given: float | None,
             image: Path, metadata: Path) -> tuple[float, str]:
    """The WSI's resolution: the TIFF's when it records one, else the metadata's
    ``pixel_size_um_estimated`` (per full-resolution pixel, divided by ``scale``), else the
    sheet / config ``mpp``."""
    estimated = positive(meta, "pixel_size_um_estimated")
    derived = estimated / scale if estimated else None
    if not (file_mpp or derived) and given:
        return float(given), GIVEN_MPP
    return choose_mpp(file_mpp, derived, image, f"{metadata.name} pixel_size_um_estimated")


def grid_pitch_px(xy: np.ndarray) -> float | None:
    """Median centre-to-nearest-centre distance of the rows (their grid's pitch); None below 2."""
    if len(xy) < 2:
        return None
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1]))


def spot_diameter(meta: dict, technology: str, pitch_um: float | None,
                  source: Path) -> tuple[float, str]:
    """``(diameter um, where it came from)`` of one row of the st/ table."""
    if technology in POOLED:
        if pitch_um:
            return pitch_um, "side of HEST's pseudo-spot squares: the measured grid pitch"
        return SPOT_UM[technology][0], "side of HEST's pseudo-spot squares: HEST's pooling"
    diameter = positive(meta, "spot_diameter")
    if diameter:
        return diameter, "metadata spot_diameter"
    nominal = SPOT_UM[technology][0]
    log.warning("%s: no spot_diameter; using the nominal %s spot of %g um", source, technology,
                nominal)
    return nominal, f"nominal {technology} spot (the metadata has no spot_diameter)"


def check_pitch(meta: dict, pitch_um: float | None, source: Path) -> None:
    """Warn when the spots' measured pitch contradicts the metadata's ``inter_spot_dist``."""
    expected = positive(meta, "inter_spot_dist")
    if pitch_um and expected and abs(pitch_um / expected - 1) > PITCH_TOLERANCE:
        log.warning("%s: spots are %.1f um apart but inter_spot_dist says %.1f um: the "
                    "positions or the resolution may be wrong", source, pitch_um, expected)


def read_st_table(path: Path):
    """``st/<id>.h5ad`` with ``obsm["spatial"]`` as ``(n, 2)`` float64 full-resolution pixels."""
    from pastflow.tables import read_h5ad

    adata = read_h5ad(path, "HEST st/ table")
    if "spatial" not in adata.obsm:
        raise InputError(path, "no obsm['spatial'] (spot centres in full-resolution pixels): "
                               "not a HEST st/ table")
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape != (adata.n_obs, 2):
        raise InputError(path, f"obsm['spatial'] has shape {xy.shape}; expected ({adata.n_obs}, 2)")
    return adata, xy


def read_hest(data: str | Path, image: str | Path, mpp: float | None = None,
              settings: HestSettings = HestSettings(), progress: bool = True) -> SampleParts:
    """One HEST sample: ``data`` = its ``st/<id>.h5ad``, ``image`` = its ``wsis/<id>.tif``.

    ``mpp`` (sheet or config) is used only when neither the TIFF nor the metadata gives one.
    """
    from pastflow.slide import open_slide

    data, image = Path(data), Path(image)
    paths = HestPaths.of_st(data)
    meta = read_metadata(paths.metadata)
    technology = meta["st_technology"]
    with open_slide(image) as slide:
        file_mpp, size = slide.mpp, slide.level_dimensions[0]
    scale = image_scale(meta, size, paths.metadata)
    mpp_value, mpp_source = hest_mpp(meta, file_mpp, scale, mpp, image, paths.metadata)
    uns = {"mpp_source": mpp_source, "hest_id": paths.sample_id, "st_technology": technology,
           "image_scale": scale, "metadata_path": str(paths.metadata.resolve()),
           "hest_metadata": {k: v for k, v in meta.items() if isinstance(v, (str, int, float))}}
    if technology == XENIUM:
        missing = [p for p in (paths.cell_seg, paths.transcripts) if not p.is_file()]
        if settings.xenium_cells and not missing:
            from pastflow.ingest.hest_cells import read_hest_cells

            return read_hest_cells(paths, image, size, mpp_value, scale, settings.min_qv, uns,
                                   progress)
        if settings.xenium_cells:
            log.warning("%s: cells were not available (%s missing): using HEST's pseudo-spots "
                        "of %s instead", paths.sample_id, ", ".join(map(str, missing)), data)
            uns["cells_unavailable"] = [str(p) for p in missing]
    return read_hest_spots(data, image, size, meta, technology, mpp_value, scale, uns)


def read_hest_spots(data: Path, image: Path, size: tuple[int, int], meta: dict, technology: str,
                    mpp: float, scale: float, uns: dict) -> SampleParts:
    """The rows of ``st/<id>.h5ad`` as spots."""
    adata, xy = read_st_table(data)
    vendor_to_he = np.diag([scale, scale, 1.0])
    check_in_image(xy * scale, size, data, what="spots")
    pitch_px = grid_pitch_px(xy)
    pitch_um = pitch_px * scale * mpp if pitch_px else None
    if technology not in POOLED:
        check_pitch(meta, pitch_um, data)
    diameter, diameter_source = spot_diameter(meta, technology, pitch_um, data)
    is_counts = looks_like_counts(adata.X)
    if not is_counts:
        log.warning("%s: X holds processed values, not raw counts; stored as they are, "
                    "uns['pastflow']['x_is_raw_counts'] = False", data)
    keep = [c for c in KEEP_OBS if c in adata.obs.columns]
    uns.update({"unit_diameter_source": diameter_source,
                "spot_pitch_um": float("nan") if pitch_um is None else pitch_um})
    return SampleParts(
        counts=adata.X, var=pd.DataFrame(index=adata.var_names.astype(str)),
        cell_ids=adata.obs_names.astype(str).to_numpy(), xy_vendor=xy, vendor_to_he=vendor_to_he,
        vendor_space="fullres_pixels", slide_path=image, mpp=mpp, unit="spot",
        unit_diameter_um=diameter, obs=adata.obs[keep], x_is_counts=is_counts, uns=uns)
