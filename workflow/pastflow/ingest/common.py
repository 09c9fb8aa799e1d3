"""What every reader returns (:class:`SampleParts`) and how it becomes the sample's SpatialData.

Readers only parse their vendor format: counts, cell ids, vendor coordinates, the
vendor -> H&E affine and the H&E file. Everything the contract
(:mod:`pastflow.contracts`) fixes — obs columns, ``obsm["spatial"]``, ``uns["pastflow"]``,
the ``he`` / ``cells`` / ``table`` elements in ``he_pixels`` — is built here, once.

Coordinates: ``x_px, y_px`` are H&E level-0 pixels with the pixel-centre convention of the
rest of pastflow (the pixel in row ``i``, column ``j`` is at ``(x, y) = (j, i)``);
spatialdata's own raster convention puts that pixel's centre at ``(j + 0.5, i + 0.5)``, a
half-pixel difference the ``cells`` shapes ignore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.contracts import (HE_SPACE, IMAGE_KEY, MPP_TOLERANCE, OBS_COLUMNS, SHAPES_KEY,
                                TABLE_KEY, UNS_KEYS)
from pastflow.errors import InputError

log = logging.getLogger(__name__)

# Fewer than this fraction of cells on the H&E means the coordinates or the alignment are wrong.
MIN_FRACTION_IN_IMAGE = 0.5
# Cells whose bounding box spans less than this fraction of the H&E's width and of its height
# collapsed into a corner: a transform in the wrong unit (x1000, microns for pixels). A real
# section on a whole-slide scan spans a few % of it at the least.
MIN_SPREAD_FRACTION = 0.005
MIN_UNITS_FOR_SPREAD = 10  # fewer cells or spots may legitimately sit close together
# Two estimates of the H&E resolution further apart than this factor are an error: one of them
# is in the wrong unit (closer ones are only reported, above MPP_TOLERANCE).
MAX_MPP_DISAGREEMENT = 1.5


@dataclass
class SampleParts:
    """One sample as read from its vendor files, before assembly.

    Attributes:
        counts: ``(n, g)`` raw counts (any sparse or dense matrix; stored as CSR float32).
        var: ``(g,)`` gene table, index = gene symbols (made unique at assembly).
        cell_ids: ``(n,)`` unique ids (strings).
        xy_vendor: ``(n, 2)`` centroids ``[x, y]`` in ``vendor_space``.
        vendor_to_he: ``(3, 3)`` affine, vendor ``[x, y, 1]`` -> H&E level-0 pixels.
        vendor_space: ``"microns"``, ``"fullres_pixels"`` or ``"he_pixels"``.
        slide_path: the H&E file the patches stage reads (None: ``embedded_he`` is exported).
        mpp: microns per H&E level-0 pixel.
        unit_diameter_um: typical cell / spot / bin diameter.
        unit: ``"cell"`` or ``"spot"`` (:data:`pastflow.contracts.UNITS`); None = the
            technology's own (:mod:`pastflow.technologies`).
        radius_um: ``(n,)`` radius of each unit's circle in ``shapes["cells"]`` (default: half
            ``unit_diameter_um``).
        obs: extra per-unit columns worth keeping (``in_tissue``, ``cell_area``, ...).
        uns: extra ``uns["pastflow"]`` entries (provenance, notes on the image used, ...).
        embedded_he: for an already-converted SpatialData input, the H&E pyramid levels
            (``(3, y, x)`` uint8, finest first) to export as the slide.
        x_is_counts: False when the source had only processed values (then said in ``uns``).
    """

    counts: sparse.spmatrix | np.ndarray
    var: pd.DataFrame
    cell_ids: np.ndarray
    xy_vendor: np.ndarray
    vendor_to_he: np.ndarray
    vendor_space: str
    slide_path: Path | None
    mpp: float
    unit_diameter_um: float
    unit: str | None = None
    radius_um: np.ndarray | None = None
    obs: pd.DataFrame | None = None
    uns: dict = field(default_factory=dict)
    embedded_he: list | None = None
    x_is_counts: bool = True

    @property
    def xy_px(self) -> np.ndarray:
        """``(n, 2)`` centroids in H&E level-0 pixels."""
        return apply_affine(self.vendor_to_he, self.xy_vendor)


# --------------------------------------------------------------------------- geometry


def apply_affine(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` points through a 3x3 affine (``[x', y', 1] = M @ [x, y, 1]``)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return xy @ m[:2, :2].T + m[:2, 2]


def affine_scale(matrix: np.ndarray) -> float:
    """Mean linear scale of an affine: ``sqrt(|det|)`` of its 2x2 part (output units per input unit)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:2, :2]))))


def fit_affine(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine ``src -> dst`` (both ``(n, 2)``, n >= 3): ``(3x3 matrix, rms residual)``.

    The residual is in ``dst`` units.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    design = np.column_stack([src, np.ones(len(src))])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    matrix = np.eye(3)
    matrix[:2, :] = coef.T
    rms = float(np.sqrt(np.mean(np.sum((design @ coef - dst) ** 2, axis=1))))
    return matrix, rms


def check_affine(matrix: np.ndarray, source: str | Path) -> np.ndarray:
    """``matrix`` as a float 3x3 affine, or :class:`InputError` naming ``source``."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"transformation is not numeric ({err})") from err
    if m.shape != (3, 3):
        raise InputError(source, f"expected a 3x3 transformation matrix, found shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(source, "transformation matrix holds NaN or infinite values")
    if not np.allclose(m[2], [0, 0, 1], atol=1e-6):
        raise InputError(source, f"last row of the transformation must be [0, 0, 1], found {m[2].tolist()}")
    if abs(np.linalg.det(m[:2, :2])) < 1e-12:
        raise InputError(source, "transformation matrix is singular (its 2x2 part has determinant 0)")
    return m


def in_image(xy_px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(n,)`` bool: the point lies on level 0 of ``size = (width, height)`` (pixel-centre convention)."""
    width, height = size
    x, y = xy_px[:, 0], xy_px[:, 1]
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


def check_in_image(xy_px: np.ndarray, size: tuple[int, int], source: str | Path, what: str = "cells",
                   hint: str = "") -> int:
    """Fail unless most points lie on the H&E; return how many lie outside (logged).

    ``size``: ``(width, height)`` of level 0. ``source``: the file whose coordinates or
    transform put them there (named in the error, followed by ``hint``).
    """
    inside = in_image(xy_px, size)
    n_out = int((~inside).sum())
    if len(xy_px):
        lo, hi = xy_px.min(axis=0), xy_px.max(axis=0)
        span = f"x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f} px"
    if len(xy_px) and inside.mean() < MIN_FRACTION_IN_IMAGE:
        raise InputError(source, f"{n_out} of {len(xy_px)} {what} map outside the {size[0]} x {size[1]} px "
                                 f"H&E (they span {span}): wrong image, coordinates or alignment.{hint}")
    extent = hi - lo if len(xy_px) else np.zeros(2)
    if len(xy_px) >= MIN_UNITS_FOR_SPREAD and np.all(extent < MIN_SPREAD_FRACTION * np.asarray(size)):
        raise InputError(source, f"all {len(xy_px)} {what} fall within {extent[0]:.1f} x "
                                 f"{extent[1]:.1f} px ({span}) of the {size[0]} x {size[1]} px "
                                 f"H&E, less than {MIN_SPREAD_FRACTION:.1%} of its width and "
                                 "height: the transform is in the wrong unit (e.g. scaled "
                                 f"x1000, or microns where pixels are expected).{hint}")
    if n_out:
        log.warning("%d of %d %s lie outside the H&E (kept; the patches stage flags them)", n_out,
                    len(xy_px), what)
    return n_out


def check_derived_mpp(derived_mpp: float, source: str | Path, derived_from: str) -> float:
    """A resolution derived from vendor geometry (an alignment matrix, a spot size or pitch):
    :class:`InputError` naming ``source`` unless it is a plausible scan resolution."""
    from pastflow.slide import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP

    if not (np.isfinite(derived_mpp) and MIN_PLAUSIBLE_MPP <= derived_mpp <= MAX_PLAUSIBLE_MPP):
        raise InputError(source, f"the {derived_from} gives {derived_mpp:.4g} um per H&E pixel, "
                                 f"outside any scan's {MIN_PLAUSIBLE_MPP}..{MAX_PLAUSIBLE_MPP}: "
                                 f"the {derived_from} is likely in the wrong unit (e.g. scaled "
                                 "x1000, or microns where pixels are expected), or pairs with "
                                 "another image")
    return float(derived_mpp)


def choose_mpp(file_mpp: float | None, derived_mpp: float | None, source: str | Path,
               derived_from: str) -> tuple[float, str]:
    """The H&E resolution: the scanner's (file metadata) when known, else the vendor-derived one.

    Returns ``(mpp, where it came from)``; warns when both exist and disagree by more than
    :data:`pastflow.contracts.MPP_TOLERANCE`.

    Raises:
        InputError (naming ``source``): the derived resolution is not a plausible scan's
            (:func:`check_derived_mpp`), or the two disagree by more than a factor
            :data:`MAX_MPP_DISAGREEMENT`: cells would be placed at one scale and cut at
            another. The message says which is likely wrong.
    """
    if derived_mpp is not None:
        from pastflow.slide import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP

        plausible = (np.isfinite(derived_mpp)
                     and MIN_PLAUSIBLE_MPP <= derived_mpp <= MAX_PLAUSIBLE_MPP)
        if file_mpp and not (1 / MAX_MPP_DISAGREEMENT <= derived_mpp / file_mpp
                             <= MAX_MPP_DISAGREEMENT):
            culprit = (f"the {derived_from} is likely in the wrong unit (e.g. scaled x1000, or "
                       "microns where pixels are expected)" if not plausible else
                       f"either the image's resolution metadata or the {derived_from} is "
                       "wrong (or the image is another scan or a resampled copy)")
            raise InputError(source, f"the {derived_from} gives {derived_mpp:.4g} um per H&E "
                                     f"pixel but the image records {file_mpp:.4g} um/px "
                                     f"({max(derived_mpp / file_mpp, file_mpp / derived_mpp):,.1f}"
                                     f"x apart): {culprit}")
        if not file_mpp:
            check_derived_mpp(derived_mpp, source, derived_from)
    if file_mpp and derived_mpp and abs(file_mpp / derived_mpp - 1) > MPP_TOLERANCE:
        log.warning("%s: the image says %.4f um/px but the %s gives %.4f um/px; using the image's",
                    source, file_mpp, derived_from, derived_mpp)
    if file_mpp:
        return float(file_mpp), "image metadata"
    if derived_mpp:
        return float(derived_mpp), derived_from
    raise InputError(source, "no microns-per-pixel: not in the image, and none could be derived; "
                             "give it in the sample sheet column mpp or the config key ingest.mpp")


def is_blank(slide_path: str | Path) -> bool:
    """True when the H&E is one flat colour (a placeholder image, e.g. an all-white JPEG)."""
    from pastflow.thumbnail import read_thumbnail

    thumb, _ = read_thumbnail(str(slide_path), max_side=512)
    return float(thumb.reshape(-1, 3).std(axis=0).max()) < 1.0


# --------------------------------------------------------------------------- table


def as_csr_float32(counts) -> sparse.csr_matrix:
    """Counts as CSR float32 (the contract's ``X``)."""
    matrix = sparse.csr_matrix(counts, dtype=np.float32)
    matrix.sort_indices()
    return matrix


def looks_like_counts(matrix) -> bool:
    """True when every stored value is a non-negative integer (raw counts, not normalised data)."""
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix).ravel()
    values = np.asarray(values)
    with np.errstate(invalid="ignore"):  # inf and NaN are not counts (check_values refuses them)
        return bool(values.size == 0 or (values.min() >= 0 and np.all(np.mod(values, 1) == 0)))


def check_values(parts: SampleParts, source: str | Path) -> None:
    """Refuse NaN or infinite counts and coordinates (:class:`InputError` naming ``source``,
    the file they came from); log cells without a single count (kept: QC filters them).

    Counts may be processed values (``x_is_counts`` False) but never non-finite: every later
    stage would silently propagate them. A cell without a position cannot have a patch.
    """
    counts = parts.counts
    values = np.asarray(counts.data if sparse.issparse(counts) else counts)
    bad = ~np.isfinite(values)
    if bad.any():
        kinds = " and ".join(k for k, n in (("NaN", np.isnan(values).sum()),
                                            ("infinite", np.isinf(values).sum())) if n)
        raise InputError(source, f"the count matrix holds {int(bad.sum())} {kinds} value(s); "
                                 "expected finite counts")
    xy = np.asarray(parts.xy_vendor, dtype=np.float64)
    no_position = ~np.isfinite(xy).all(axis=1)
    if no_position.any():
        first = np.asarray(parts.cell_ids)[no_position][0]
        raise InputError(source, f"{int(no_position.sum())} of {len(xy)} cells have a NaN or "
                                 f"infinite position (first: {first!r})")
    if counts.shape[1]:  # H&E-only samples have no genes
        totals = np.asarray(counts.sum(axis=1)).ravel()
        n_empty = int((totals == 0).sum())
        if n_empty:
            log.warning("%s: %d of %d cells have zero counts (kept; qc filters them)", source,
                        n_empty, len(totals))


def build_table(parts: SampleParts, sample: str, patient: str, uns: dict):
    """The contract's AnnData: X counts, obs columns, ``obsm["spatial"]``, ``uns["pastflow"] = uns``.

    Extra per-unit columns of ``parts.obs`` follow the contract's columns, then ``region``
    (the shapes element each row annotates).
    """
    import anndata as ad

    xy_px = parts.xy_px
    cell_ids = pd.Index(np.asarray(parts.cell_ids).astype(str))
    if not cell_ids.is_unique:
        dupes = cell_ids[cell_ids.duplicated()].unique()[:5].tolist()
        raise InputError(uns["data_path"] or uns["slide_path"], f"cell ids are not unique (e.g. {dupes})")
    obs = pd.DataFrame({
        "cell_id": cell_ids.to_numpy(),
        "sample": pd.Categorical([sample] * len(cell_ids)),
        "patient": pd.Categorical([patient] * len(cell_ids)),
        "x_px": xy_px[:, 0],
        "y_px": xy_px[:, 1],
        "x_vendor": np.asarray(parts.xy_vendor, dtype=np.float64)[:, 0],
        "y_vendor": np.asarray(parts.xy_vendor, dtype=np.float64)[:, 1],
    }, index=cell_ids)
    if parts.obs is not None and len(parts.obs.columns):
        extra = parts.obs.reset_index(drop=True)
        extra.index = cell_ids
        obs = obs.join(extra[[c for c in extra.columns if c not in obs.columns]])
    obs["region"] = pd.Categorical([SHAPES_KEY] * len(cell_ids))
    var = parts.var.copy()
    var.index = pd.Index(var.index.astype(str), name=None)
    table = ad.AnnData(X=as_csr_float32(parts.counts), obs=obs, var=var)
    table.var_names_make_unique()
    table.obsm["spatial"] = xy_px
    table.uns["pastflow"] = uns
    assert tuple(table.obs.columns[:len(OBS_COLUMNS)]) == OBS_COLUMNS
    return table


def pastflow_uns(parts: SampleParts, sample: str, patient: str, technology: str,
                 slide_path: Path, data_path: str, image_downsample: float) -> dict:
    """``uns["pastflow"]``: the contract's keys, then provenance and the reader's notes."""
    uns = {
        "technology": technology,
        "sample": sample,
        "patient": patient,
        "slide_path": str(slide_path),
        "mpp": float(parts.mpp),
        "vendor_to_he": np.asarray(parts.vendor_to_he, dtype=np.float64).tolist(),
        "vendor_space": parts.vendor_space,
        "unit": parts.unit,
        "unit_diameter_um": float(parts.unit_diameter_um),
        "data_path": data_path,
        "x_is_raw_counts": bool(parts.x_is_counts),
        "he_image_downsample": float(image_downsample),
    }
    assert all(k in uns for k in UNS_KEYS)
    uns.update({k: v for k, v in parts.uns.items() if k not in uns})
    return uns


def build_sdata(parts: SampleParts, table, image_element):
    """SpatialData with the ``he`` image, ``cells`` circles and ``table``, all in ``he_pixels``."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n = table.n_obs
    radius_um = (np.full(n, parts.unit_diameter_um / 2) if parts.radius_um is None
                 else np.asarray(parts.radius_um, dtype=np.float64))
    radius_px = np.clip(np.nan_to_num(radius_um / parts.mpp, nan=parts.unit_diameter_um / 2 / parts.mpp),
                        1e-3, None)
    circles = ShapesModel.parse(table.obsm["spatial"], geometry=0, radius=radius_px,
                                index=pd.Index(table.obs["cell_id"].to_numpy(), name="cell_id"),
                                transformations={HE_SPACE: Identity()})
    table = TableModel.parse(table, region=SHAPES_KEY, region_key="region", instance_key="cell_id")
    return SpatialData(images={IMAGE_KEY: image_element}, shapes={SHAPES_KEY: circles},
                       tables={TABLE_KEY: table})
