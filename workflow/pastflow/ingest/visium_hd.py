"""10x Visium HD: a Space Ranger HD ``outs/`` folder, 8 um bins as the units, and its H&E.

``spatialdata_io.visium_hd`` reads ``binned_outputs/square_008um`` (filtered matrix, bin
centres in full-resolution pixels, scale factors with ``microns_per_pixel``).

Vendor space: microns on the bin grid, bin ``(array_row i, array_col j)`` of side ``b``
centred at ``((j + 0.5) b, (i + 0.5) b)``. ``vendor_to_he`` is the least-squares affine from
those microns to the bin centres' pixels (Space Ranger's registration, nearly exact: its rms
residual is kept in ``uns``), times the image scale when the H&E is a downsampled copy.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from pastflow.errors import InputError
from pastflow.ingest.common import (
    SampleParts,
    affine_scale,
    apply_affine,
    check_in_image,
    choose_mpp,
    fit_affine,
    looks_like_counts,
)
from pastflow.ingest.visium import image_scale, read_scalefactors

log = logging.getLogger(__name__)

BIN_UM = 8
MAX_FIT_RMS_BINS = 0.25  # a grid -> pixel fit worse than this is not a registration


def bin_grid_microns(array_row: np.ndarray, array_col: np.ndarray, bin_um: float) -> np.ndarray:
    """``(n, 2)`` bin centres ``[x, y]`` in bin-grid microns."""
    return np.column_stack([(np.asarray(array_col, np.float64) + 0.5) * bin_um,
                            (np.asarray(array_row, np.float64) + 0.5) * bin_um])


def read_visium_hd(outs: str | Path, image: str | Path, sample: str, bin_um: int = BIN_UM,
                   mpp: float | None = None) -> SampleParts:
    """Visium HD bins of ``bin_um`` microns with their H&E (``mpp``: last-resort resolution)."""
    import spatialdata_io

    from pastflow.slide import open_slide

    outs, image = Path(outs), Path(image)
    bin_dir = outs / "binned_outputs" / f"square_{bin_um:03d}um"
    if not bin_dir.is_dir():
        raise InputError(outs, f"not a Visium HD output folder with {bin_um} um bins "
                               f"(no {bin_dir.relative_to(outs)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = spatialdata_io.visium_hd(outs, dataset_id=sample, bin_size=bin_um,
                                             load_segmentations_only=False, bins_as_squares=False)
    except (FileNotFoundError, KeyError, ValueError, OSError, IndexError, AssertionError) as err:
        raise InputError(outs, f"spatialdata-io cannot read this Visium HD output: {err}") from err
    table = sdata.tables[f"square_{bin_um:03d}um"]
    xy_fullres = np.asarray(table.obsm["spatial"], dtype=np.float64)
    xy_um = bin_grid_microns(table.obs["array_row"], table.obs["array_col"], bin_um)
    grid_to_fullres, rms = fit_affine(xy_um, xy_fullres)
    rms_bins = rms / (affine_scale(grid_to_fullres) * bin_um)
    if rms_bins > MAX_FIT_RMS_BINS:
        log.warning("%s: bin positions deviate from a regular grid by %.2f bins rms", bin_dir, rms_bins)
    scalefactors = read_scalefactors(bin_dir)
    with open_slide(image) as slide:
        file_mpp, size = slide.mpp, slide.level_dimensions[0]
    scale, note = image_scale(image, size, scalefactors, xy_fullres, outs)
    vendor_to_he = np.diag([scale, scale, 1.0]) @ grid_to_fullres
    check_in_image(apply_affine(vendor_to_he, xy_um), size, bin_dir / "spatial", what="bins")
    fullres_mpp = float(scalefactors.get("microns_per_pixel") or 1 / affine_scale(grid_to_fullres))
    mpp_value, mpp_source = choose_mpp(file_mpp, fullres_mpp / scale, image,
                                       "microns_per_pixel (scalefactors)")
    var = table.var[[c for c in ("gene_ids", "feature_types") if c in table.var.columns]]
    obs = table.obs[[c for c in ("in_tissue", "array_row", "array_col") if c in table.obs.columns]]
    return SampleParts(
        counts=table.X, var=var, cell_ids=table.obs_names.astype(str).to_numpy(), xy_vendor=xy_um,
        vendor_to_he=vendor_to_he, vendor_space="microns", slide_path=image, mpp=mpp_value,
        unit_diameter_um=float(bin_um), radius_um=np.full(len(xy_um), bin_um / 2), obs=obs,
        x_is_counts=looks_like_counts(table.X),
        uns={"mpp_source": mpp_source, "image_note": note, "image_scale": scale, "bin_um": bin_um,
             "vendor_fit_rms_px": rms})
