"""10x Visium (55 um spots): a Space Ranger ``outs/`` folder, or an AnnData with image coordinates.

Space Ranger gives spot centres in full-resolution image pixels (``tissue_positions.csv``,
or ``tissue_positions_list.csv`` without a header before Space Ranger 2.0; both read by
``spatialdata_io.visium``). The H&E given may be the full-resolution image, or, when that is
lost, one of Space Ranger's downsampled copies (``spatial/tissue_hires_image.png``,
``tissue_lowres_image.png``): the spots are then scaled by that image's scale factor, and
``uns`` says so. Resolution: the image's own when it records one, else
``55 um / spot_diameter_fullres`` (Space Ranger's spot diameter in full-resolution pixels,
from fiducial registration) divided by the image scale.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pastflow.errors import InputError
from pastflow.ingest.common import (
    MIN_FRACTION_IN_IMAGE,
    SampleParts,
    affine_scale,
    apply_affine,
    check_in_image,
    choose_mpp,
    fit_affine,
    in_image,
    looks_like_counts,
)
from pastflow.technologies import REGISTRY

log = logging.getLogger(__name__)

SPOT_DIAMETER_UM = REGISTRY["visium"].unit_diameter_um
ANNDATA_SUFFIXES = (".h5ad", ".h5")  # an AnnData instead of Space Ranger outs/
# Space Ranger's downsampled images and the scale factor (image px per full-res px) of each.
DOWNSAMPLED_IMAGES = {"tissue_hires_image": "tissue_hires_scalef",
                      "tissue_lowres_image": "tissue_lowres_scalef"}
KEEP_OBS = ("in_tissue", "array_row", "array_col")


def read_scalefactors(folder: str | Path) -> dict:
    """``folder/spatial/scalefactors_json.json`` as a dict ({} when absent)."""
    path = Path(folder) / "spatial" / "scalefactors_json.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from err


def image_scale(image: Path, size: tuple[int, int], scalefactors: dict, xy_fullres: np.ndarray,
                source: str | Path) -> tuple[float, str]:
    """Pixels of ``image`` per full-resolution pixel, and a note on the image used.

    By name for Space Ranger's own downsampled images; otherwise 1 (a full-resolution image)
    when the spots fall on it, else the hires or lowres factor that puts them on it.
    """
    stem = image.name.split(".")[0]
    if stem in DOWNSAMPLED_IMAGES:
        key = DOWNSAMPLED_IMAGES[stem]
        if key not in scalefactors:
            raise InputError(source, f"{image.name} is a downsampled image but the scale factors "
                                     f"lack '{key}'")
        scale = float(scalefactors[key])
        return scale, (f"no full-resolution image: the H&E is {image.name}, {scale:.6g} x full "
                       "resolution; spots scaled by it")
    if in_image(xy_fullres, size).mean() >= MIN_FRACTION_IN_IMAGE:
        return 1.0, "full-resolution image"
    for key in DOWNSAMPLED_IMAGES.values():
        scale = scalefactors.get(key)
        if scale and in_image(xy_fullres * scale, size).mean() >= MIN_FRACTION_IN_IMAGE:
            return float(scale), (f"the H&E matches '{key}' ({scale:.6g} x full resolution); "
                                  "spots scaled by it")
    return 1.0, "full-resolution image"  # check_in_image then reports the mismatch


def spot_diameter_um(scalefactors: dict, fullres_mpp: float, source: Path) -> float:
    """The spots' diameter in microns as the data give it (``spot_diameter_fullres`` pixels
    of ``fullres_mpp`` microns), or the nominal 55 um when they give none or an implausible
    one (more than 25% off: a wrong image resolution, said in a warning)."""
    pixels = scalefactors.get("spot_diameter_fullres")
    if not pixels:
        return SPOT_DIAMETER_UM
    diameter = float(pixels) * fullres_mpp
    if abs(diameter / SPOT_DIAMETER_UM - 1) > 0.25:
        log.warning("%s: spot_diameter_fullres gives %.1f um spots at %.4f um per full-resolution "
                    "pixel; using the nominal %g um", source, diameter, fullres_mpp,
                    SPOT_DIAMETER_UM)
        return SPOT_DIAMETER_UM
    return diameter


def read_visium(outs: str | Path, image: str | Path, sample: str, mpp: float | None = None) -> SampleParts:
    """A Space Ranger ``outs/`` folder (filtered matrix, spot positions, scale factors) + its H&E.

    ``mpp`` is a last resort when neither the image nor the scale factors give a resolution.
    """
    import spatialdata_io

    from pastflow.slide import open_slide

    outs, image = Path(outs), Path(image)
    if (outs / "outs").is_dir() and not (outs / "spatial").is_dir():
        outs = outs / "outs"  # the run folder was given
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = spatialdata_io.visium(outs, dataset_id=sample, fullres_image_file=None)
    except (FileNotFoundError, KeyError, ValueError, OSError, IndexError, AssertionError) as err:
        raise InputError(outs, f"spatialdata-io cannot read this Space Ranger output: {err}") from err
    table = sdata.tables["table"]
    xy = np.asarray(table.obsm["spatial"], dtype=np.float64)
    if np.isnan(xy).any():
        raise InputError(outs, f"{int(np.isnan(xy).any(axis=1).sum())} barcodes of the matrix have no "
                               "position in the tissue positions file")
    scalefactors = read_scalefactors(outs)
    with open_slide(image) as slide:
        file_mpp, size = slide.mpp, slide.level_dimensions[0]
    scale, note = image_scale(image, size, scalefactors, xy, outs)
    vendor_to_he = np.diag([scale, scale, 1.0])
    check_in_image(xy * scale, size, outs / "spatial", what="spots")
    derived = (SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"]) / scale
               if scalefactors.get("spot_diameter_fullres") else mpp)
    mpp_value, mpp_source = choose_mpp(file_mpp, derived, image, "spot diameter (scalefactors_json.json)")
    var = table.var[[c for c in ("gene_ids", "feature_types") if c in table.var.columns]]
    return SampleParts(
        counts=table.X, var=var, cell_ids=table.obs_names.astype(str).to_numpy(), xy_vendor=xy,
        vendor_to_he=vendor_to_he, vendor_space="fullres_pixels", slide_path=image, mpp=mpp_value,
        unit_diameter_um=spot_diameter_um(scalefactors, mpp_value * scale, outs),
        obs=table.obs[[c for c in KEEP_OBS if c in table.obs]],
        x_is_counts=looks_like_counts(table.X),
        uns={"mpp_source": mpp_source, "image_note": note, "image_scale": scale,
             "scalefactors": {k: float(v) for k, v in scalefactors.items() if isinstance(v, (int, float))}})


def _spatial_library(adata) -> dict:
    spatial = adata.uns.get("spatial", {})
    return next(iter(spatial.values())) if len(spatial) == 1 else {}


def read_visium_anndata(path: str | Path, image: str | Path, mpp: float | None = None) -> SampleParts:
    """Visium spots from an AnnData (``.h5ad`` / AnnData-encoded ``.h5``) and the H&E they sit on.

    Coordinates: ``obs["imagecol"], obs["imagerow"]`` (pixels of ``image``, the stLearn
    convention) when present, with ``obsm["spatial"]`` (full-resolution pixels) as the vendor
    space and the fitted scale between them as ``vendor_to_he``; else ``obsm["spatial"]``
    scaled like :func:`read_visium`. Counts: ``layers["counts"]``, else ``.raw``, else ``X``;
    if those are not raw counts (negative or fractional values) the sample is kept and
    ``uns["pastflow"]["x_is_raw_counts"]`` is False.
    """
    from pastflow.slide import open_slide
    from pastflow.tables import read_h5ad

    path, image = Path(path), Path(image)
    try:
        adata = read_h5ad(path, "Visium AnnData")
    except InputError as err:
        problem = f"{err.problem}; for Space Ranger output give the outs/ folder"
        raise InputError(path, problem) from err
    if "counts" in adata.layers:
        counts, var, counts_source = adata.layers["counts"], adata.var, "layers['counts']"
    elif adata.raw is not None:
        counts, var, counts_source = adata.raw.X, adata.raw.var, "raw.X"
    else:
        counts, var, counts_source = adata.X, adata.var, "X"
    is_counts = looks_like_counts(counts)
    if not is_counts:
        log.warning("%s: %s holds processed values (negative or fractional), not raw counts; "
                    "stored as they are, uns['pastflow']['x_is_raw_counts'] = False", path, counts_source)
    library = _spatial_library(adata)
    scalefactors = library.get("scalefactors", {})
    with open_slide(image) as slide:
        file_mpp, size = slide.mpp, slide.level_dimensions[0]
    notes = {"counts_source": counts_source}
    if {"imagecol", "imagerow"} <= set(adata.obs.columns):
        xy_px = adata.obs[["imagecol", "imagerow"]].to_numpy(np.float64)
        if "spatial" in adata.obsm:
            xy_vendor = np.asarray(adata.obsm["spatial"], dtype=np.float64)
            vendor_to_he, rms = fit_affine(xy_vendor, xy_px)
            vendor_space = "fullres_pixels"
            notes["vendor_fit_rms_px"] = rms
        else:
            xy_vendor, vendor_to_he, vendor_space = xy_px, np.eye(3), "he_pixels"
        notes["image_note"] = "spots at obs imagecol/imagerow, pixels of the given image"
    elif "spatial" in adata.obsm:
        xy_vendor = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        scale, notes["image_note"] = image_scale(image, size, scalefactors, xy_vendor, path)
        vendor_to_he, vendor_space = np.diag([scale, scale, 1.0]), "fullres_pixels"
    else:
        raise InputError(path, "no spot coordinates: expected obs imagecol/imagerow or obsm['spatial']")
    check_in_image(apply_affine(vendor_to_he, xy_vendor), size, path, what="spots")
    derived = mpp
    if scalefactors.get("spot_diameter_fullres") and vendor_space == "fullres_pixels":
        derived = SPOT_DIAMETER_UM / float(scalefactors["spot_diameter_fullres"]) / affine_scale(vendor_to_he)
    mpp_value, notes["mpp_source"] = choose_mpp(file_mpp, derived, image, "spot diameter (uns['spatial'])")
    keep = [c for c in KEEP_OBS if c in adata.obs.columns]
    return SampleParts(
        counts=counts, var=pd.DataFrame(index=var.index.astype(str)),
        cell_ids=adata.obs_names.astype(str).to_numpy(),
        xy_vendor=xy_vendor, vendor_to_he=vendor_to_he, vendor_space=vendor_space, slide_path=image,
        mpp=mpp_value, obs=adata.obs[keep], x_is_counts=is_counts,
        unit_diameter_um=(spot_diameter_um(scalefactors, mpp_value * affine_scale(vendor_to_he), path)
                          if vendor_space == "fullres_pixels" else SPOT_DIAMETER_UM),
        uns=notes)
