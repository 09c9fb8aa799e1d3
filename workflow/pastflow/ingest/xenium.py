"""10x Xenium: an Xenium Onboard Analysis bundle plus the post-Xenium H&E and its alignment.

The cell table (counts of the ``Gene Expression`` features, centroids in Xenium microns,
areas) comes from ``spatialdata_io.xenium``; the H&E is the post-Xenium OME-TIFF (pyramid in
SubIFDs) beside the bundle.

The alignment (10x ``*_he_imagealignment.csv``, three comma-separated rows, no header) is the
3x3 affine that maps H&E image pixels ``[x, y, 1]`` to Xenium morphology-image pixels (DAPI
pixels of ``pixel_size`` um, 0.2125 um on current instruments); ``spatialdata_io`` reads it the
same way (``xenium_aligned_image``: an ``Affine`` from the H&E to the ``global`` =
morphology-pixel coordinate system). Cell centroids are in microns, so::

    vendor_to_he = inv(alignment) @ diag(1 / pixel_size, 1 / pixel_size, 1)

and the H&E resolution follows from it: ``mpp = 1 / sqrt(|det(vendor_to_he[:2, :2])|)``.
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
    SampleParts,
    affine_scale,
    apply_affine,
    check_affine,
    check_in_image,
    choose_mpp,
)
from pastflow.technologies import REGISTRY

log = logging.getLogger(__name__)

CELL_DIAMETER_UM = REGISTRY["xenium"].unit_diameter_um
KEEP_OBS = ("transcript_counts", "control_probe_counts", "control_codeword_counts", "total_counts",
            "cell_area", "nucleus_area")


def read_alignment_csv(path: str | Path) -> np.ndarray:
    """The 3x3 matrix of a 10x ``*_imagealignment.csv``; :class:`InputError` if it is not one."""
    path = Path(path)
    try:
        matrix = pd.read_csv(path, header=None).to_numpy()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a 3x3 comma-separated alignment matrix ({err})") from err
    return check_affine(matrix, path)


def read_pixel_size(bundle: str | Path) -> float:
    """Microns per morphology-image pixel, from ``experiment.xenium``."""
    spec_path = Path(bundle) / "experiment.xenium"
    try:
        spec = json.loads(spec_path.read_text())
        pixel_size = float(spec["pixel_size"])
    except FileNotFoundError as err:
        raise InputError(bundle, "not a Xenium output bundle (no experiment.xenium)") from err
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(spec_path, f"no readable pixel_size ({err})") from err
    if not 0 < pixel_size < 10:
        raise InputError(spec_path, f"implausible pixel_size {pixel_size} um")
    return pixel_size


def xenium_to_he(alignment: np.ndarray, pixel_size: float) -> np.ndarray:
    """Xenium microns -> H&E level-0 pixels, from the alignment (H&E px -> morphology px)."""
    return np.linalg.inv(alignment) @ np.diag([1 / pixel_size, 1 / pixel_size, 1.0])


def read_xenium_cells(bundle: str | Path):
    """The bundle's cell table through ``spatialdata_io.xenium`` (gene expression only).

    Returns an AnnData: ``obs`` with ``cell_id``, areas and counts per category;
    ``obsm["spatial"]`` centroids ``(n, 2)`` in Xenium microns; ``X`` counts.
    """
    import spatialdata_io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # version/format chatter from the reader
            sdata = spatialdata_io.xenium(
                bundle, cells_boundaries=False, nucleus_boundaries=False, cells_as_circles=False,
                cells_labels=False, nucleus_labels=False, transcripts=False, morphology_mip=False,
                morphology_focus=False, aligned_images=False, cells_table=True, gex_only=True)
    except (FileNotFoundError, KeyError, ValueError, OSError, AssertionError) as err:
        raise InputError(bundle, f"spatialdata-io cannot read this Xenium bundle: {err}") from err
    return sdata.tables["table"]


def read_xenium(bundle: str | Path, image: str | Path, alignment: str | Path) -> SampleParts:
    """A Xenium bundle with its post-Xenium H&E (``image``) and alignment csv.

    Raises:
        InputError: unreadable bundle or csv, singular matrix, or a matrix that puts most
            cells outside the H&E.
    """
    from pastflow.slide import open_slide

    bundle, image, alignment = Path(bundle), Path(image), Path(alignment)
    pixel_size = read_pixel_size(bundle)
    matrix = read_alignment_csv(alignment)
    vendor_to_he = xenium_to_he(matrix, pixel_size)
    table = read_xenium_cells(bundle)
    xy_um = np.asarray(table.obsm["spatial"], dtype=np.float64)
    with open_slide(image) as slide:
        file_mpp, size = slide.mpp, slide.level_dimensions[0]
    # The matrix maps microns to H&E pixels, so its scale is 1 / the H&E's mpp: checked first,
    # as a matrix in the wrong unit (x1000) still puts every cell "on" the image, in a corner.
    hint = misalignment_hint(xy_um, matrix, pixel_size, size, file_mpp)
    try:
        mpp, mpp_source = choose_mpp(file_mpp, 1 / affine_scale(vendor_to_he), alignment,
                                     "alignment matrix")
    except InputError as err:
        raise InputError(err.path, err.problem + hint) from None
    check_in_image(apply_affine(vendor_to_he, xy_um), size, alignment, hint=hint)
    obs = table.obs[[c for c in KEEP_OBS if c in table.obs.columns]]
    radius = (np.sqrt(table.obs["cell_area"].to_numpy(np.float64) / np.pi)
              if "cell_area" in table.obs else None)
    var = table.var[[c for c in ("gene_ids", "feature_types") if c in table.var.columns]]
    return SampleParts(
        counts=table.X, var=var, cell_ids=table.obs["cell_id"].astype(str).to_numpy(), xy_vendor=xy_um,
        vendor_to_he=vendor_to_he, vendor_space="microns", slide_path=image, mpp=mpp,
        unit_diameter_um=CELL_DIAMETER_UM, radius_um=radius, obs=obs,
        uns={"mpp_source": mpp_source, "xenium_pixel_size_um": pixel_size,
             "alignment_path": str(alignment.resolve()),
             "alignment_matrix": matrix.tolist()})


def misalignment_hint(xy_um: np.ndarray, matrix: np.ndarray, pixel_size: float,
                      size: tuple[int, int], file_mpp: float | None = None) -> str:
    """A sentence for the error when the alignment misses the H&E, if a known mix-up explains it.

    The usual one: a matrix to Xenium microns instead of morphology pixels. It explains the
    data when, read that way, the cells land on the H&E at a resolution that fits the image's
    (``file_mpp``, or any plausible scan's when the file records none).
    """
    from pastflow.ingest.common import MAX_MPP_DISAGREEMENT, MIN_FRACTION_IN_IMAGE, in_image
    from pastflow.slide import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP

    as_microns = apply_affine(np.linalg.inv(matrix), xy_um)
    mpp_if_microns = affine_scale(matrix)  # H&E px -> microns: its scale is the H&E's mpp
    fits = (MIN_PLAUSIBLE_MPP <= mpp_if_microns <= MAX_PLAUSIBLE_MPP if not file_mpp else
            1 / MAX_MPP_DISAGREEMENT <= mpp_if_microns / file_mpp <= MAX_MPP_DISAGREEMENT)
    if len(xy_um) and fits and in_image(as_microns, size).mean() >= MIN_FRACTION_IN_IMAGE:
        return (" The matrix fits if it maps H&E pixels to Xenium microns instead of morphology "
                f"pixels of {pixel_size} um: multiply its first two rows by 1/{pixel_size}.")
    return ""
