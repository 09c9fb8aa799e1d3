"""Xenium already converted to SpatialData (a ``.zarr``), with the H&E registered inside it.

The usual product of ``spatialdata_io.xenium(...)`` + ``xenium_aligned_image(...)`` written
to disk: a table annotating the cells (centroids in ``obsm["spatial"]``, Xenium microns, the
same space as the annotated shapes), an RGB H&E image element, and both placed in a shared
coordinate system (``global`` = Xenium morphology pixels) by their transforms. So::

    vendor_to_he = inv(H&E -> global) @ (cells -> global)

The H&E pyramid is exported beside the tables as an OME-TIFF (the patches stage reads a slide
file, not a zarr element).

Published subsets sometimes lack ``table.var`` (gene names). Then the counts are rebuilt from
``points/transcripts`` (``feature_name`` x ``cell_id``, quality ``qv >= 20`` as Xenium counts
them), negative-control probes and codewords dropped (counted per cell in
``obs["control_transcripts"]``); when the published ``X`` has exactly those genes as columns
and agrees with the transcripts (never fewer counts, since a crop can only lose transcripts),
``X`` is kept and gets the names.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.errors import InputError
from pastflow.ingest.common import (SampleParts, affine_scale, apply_affine, check_affine,
                                    check_derived_mpp, check_in_image)
from pastflow.ingest.xenium import CELL_DIAMETER_UM, KEEP_OBS

log = logging.getLogger(__name__)

MIN_QV = 20.0  # Xenium counts only transcripts of at least this Phred quality
# Xenium's negative controls: probes, codewords, blank / unassigned / deprecated codewords,
# antisense and intergenic control probes.
CONTROL_PATTERN = re.compile(
    r"^(NegControl|BLANK|Blank|UnassignedCodeword|DeprecatedCodeword|antisense|Intergenic|GenomicControl)")
HE_NAME = re.compile(r"(^|_)(he|h_e|hne|h&e)(_|$)", re.IGNORECASE)
PREFERRED_SPACE = "global"
CENTROID_TOLERANCE = 5.0  # vendor units (microns): a shapes element's cell centroid vs obsm["spatial"]


def is_control(names) -> np.ndarray:
    """``(g,)`` bool: the feature is a Xenium negative control, not a gene."""
    return np.array([bool(CONTROL_PATTERN.match(str(n))) for n in names], dtype=bool)


def read_spatialdata(path: str | Path):
    """``spatialdata.read_zarr`` with readable errors (old zarr v2 layouts are fine)."""
    import spatialdata

    logging.getLogger("ome_zarr").setLevel(logging.WARNING)  # one INFO line per array otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spatialdata.read_zarr(path)
    except Exception as err:  # zarr / ome-zarr raise many types on a malformed store
        raise InputError(path, f"not a readable SpatialData zarr ({type(err).__name__}: {err})") from err


def find_he_image(sdata, path: Path) -> str:
    """Name of the H&E image element: the RGB uint8 image, preferring a name like ``he_image``."""
    rgb = []
    for name, element in sdata.images.items():
        scale0 = _levels(element)[0]
        if scale0.shape[0] == 3 and scale0.dtype == np.uint8:
            rgb.append(name)
    named = [n for n in rgb if HE_NAME.search(n)]
    if len(named) == 1 or len(rgb) == 1:
        return (named or rgb)[0]
    raise InputError(path, f"cannot tell which image is the H&E: RGB images {rgb or 'none'} among "
                           f"{list(sdata.images)} (expected one, or one named like 'he_image')")


def _levels(element) -> list:
    """``(3, y, x)`` arrays of a (multi)scale image element, finest first."""
    if hasattr(element, "children") and "scale0" in element:
        return [element[k]["image"].data for k in sorted(element.children, key=lambda k: int(k[5:]))]
    return [element.data]


def _xy_affine(element, space: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=space)
    return t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


def find_cells_element(sdata, table, path: Path) -> str:
    """The shapes element whose cells sit at the table's ``obsm["spatial"]``, in the same units.

    The annotated region first (spatialdata-io annotates ``cell_labels``, a raster in
    morphology pixels, or the circles / boundaries in microns), then the other shapes; a
    candidate must hold most of the table's cells with centroids within
    :data:`CENTROID_TOLERANCE` of ``obsm["spatial"]``, so its transform is that of the centroids.
    """
    attrs = table.uns.get("spatialdata_attrs", {})
    region = attrs.get("region")
    region = region[0] if isinstance(region, (list, tuple, np.ndarray)) else region
    names = ([region] if region in sdata.shapes else []) + [n for n in sdata.shapes if n != region]
    ids = pd.Index(table.obs["cell_id"].astype(str).to_numpy())
    xy = np.asarray(table.obsm["spatial"], dtype=np.float64)
    for name in names:
        shapes = sdata.shapes[name]
        index = pd.Index(shapes.index.astype(str))
        if not index.is_unique:
            continue
        rows = index.get_indexer(ids)
        found = rows >= 0
        if found.mean() < 0.5:
            continue
        centroids = shapes.geometry.iloc[rows[found]].centroid
        dist = np.hypot(centroids.x.to_numpy() - xy[found, 0], centroids.y.to_numpy() - xy[found, 1])
        if np.median(dist) <= CENTROID_TOLERANCE:
            return name
    raise InputError(path, f"no shapes element holds the table's cells at obsm['spatial'] (looked at "
                           f"{names or 'none'}): cannot place the cells")


def vendor_to_he_from_sdata(sdata, image_name: str, cells_name: str, path: Path) -> tuple[np.ndarray, str]:
    """``(vendor -> H&E px affine, coordinate system used)`` for the cells of ``cells_name``."""
    from spatialdata.transformations import get_transformation

    image_spaces = set(get_transformation(sdata.images[image_name], get_all=True))
    cell_spaces = set(get_transformation(sdata.shapes[cells_name], get_all=True))
    shared = sorted(image_spaces & cell_spaces, key=lambda s: s != PREFERRED_SPACE)
    if not shared:
        raise InputError(path, f"the H&E '{image_name}' and the cells '{cells_name}' share no coordinate "
                               f"system ({sorted(image_spaces)} vs {sorted(cell_spaces)}): not registered")
    space = shared[0]
    he_to_space = check_affine(_xy_affine(sdata.images[image_name], space), f"{path} (images/{image_name})")
    cells_to_space = check_affine(_xy_affine(sdata.shapes[cells_name], space),
                                  f"{path} (shapes/{cells_name})")
    return np.linalg.inv(he_to_space) @ cells_to_space, space


def rebuild_counts(transcripts: pd.DataFrame, cell_ids: np.ndarray, feature_key: str = "feature_name",
                   ) -> tuple[sparse.csr_matrix, list[str], np.ndarray]:
    """Cell x gene counts from decoded transcripts.

    Args:
        transcripts: one row per transcript with ``feature_key``, ``cell_id`` and, if present,
            ``qv`` (only ``qv >= 20`` count, as in Xenium's own matrix).
        cell_ids: ``(n,)`` the table's cells, in order (compared as strings).

    Returns:
        ``(counts (n, g) CSR, genes (g,) in the feature order of the panel, control (n,) the
        control-probe/codeword transcripts of each cell)``.
    """
    features = transcripts[feature_key]
    names = (list(features.cat.categories) if isinstance(features.dtype, pd.CategoricalDtype)
             else sorted(features.astype(str).unique()))
    control = is_control(names)
    genes = [n for n, c in zip(names, control) if not c]
    keep = transcripts["qv"].to_numpy() >= MIN_QV if "qv" in transcripts else np.ones(len(transcripts), bool)
    cell_index = pd.Index(np.asarray(cell_ids).astype(str))
    row = cell_index.get_indexer(transcripts["cell_id"].astype(str).to_numpy())
    col = pd.Index(names).get_indexer(features.astype(str).to_numpy())
    keep &= (row >= 0) & (col >= 0)
    row, col = row[keep], col[keep]
    is_ctrl = control[col]
    gene_col = pd.Index(genes).get_indexer(np.asarray(names, dtype=object)[col[~is_ctrl]])
    counts = sparse.csr_matrix((np.ones(gene_col.size, np.float32), (row[~is_ctrl], gene_col)),
                               shape=(len(cell_index), len(genes)))
    counts.sum_duplicates()
    controls = np.bincount(row[is_ctrl], minlength=len(cell_index))
    return counts, genes, controls


def _has_gene_names(var_names: pd.Index) -> bool:
    """False for the placeholder names anndata gives a table published without ``var`` ("0", "1", ...)."""
    return len(var_names) > 0 and not all(str(v).isdigit() for v in var_names)


def read_transcripts(sdata, path: Path) -> tuple[pd.DataFrame, str]:
    """``(transcripts with feature / cell_id / qv columns, feature column name)`` from ``points``."""
    if "transcripts" not in sdata.points:
        raise InputError(path, "the table has no gene names (no var) and there are no points/transcripts "
                               "to rebuild them from")
    points = sdata.points["transcripts"]
    feature_key = points.attrs.get("spatialdata_attrs", {}).get("feature_key", "feature_name")
    missing = [c for c in (feature_key, "cell_id") if c not in points.columns]
    if missing:
        raise InputError(path, f"points/transcripts lacks column(s) {', '.join(missing)}")
    columns = [c for c in (feature_key, "cell_id", "qv") if c in points.columns]
    return points[columns].compute(), feature_key


def table_counts(sdata, table, path: Path):
    """``(counts, var, control transcripts per cell or None, where the counts come from)``.

    The table's own matrix when it names its genes (controls dropped); otherwise see the
    module docstring (transcripts are read only then: a whole run holds ~10^8 of them).
    """
    if _has_gene_names(table.var_names):
        genes = np.asarray(table.var_names.astype(str))
        keep = ~is_control(genes)
        return table.X[:, keep], table.var.iloc[keep], None, "table"
    transcripts, feature_key = read_transcripts(sdata, path)
    rebuilt, genes, controls = rebuild_counts(transcripts, table.obs["cell_id"].to_numpy(), feature_key)
    var = pd.DataFrame(index=pd.Index(genes))
    published = sparse.csr_matrix(table.X, dtype=np.float32) if table.X is not None else None
    if published is not None and published.shape == rebuilt.shape:
        excess = (rebuilt - published).max() if rebuilt.nnz else 0
        if excess <= 0:
            same = np.asarray(rebuilt.sum(axis=1)).ravel() == np.asarray(published.sum(axis=1)).ravel()
            log.info("%s: the published X matches the transcripts (%d of %d cells exactly; the others "
                     "lost transcripts to the crop): keeping X, gene names from the transcripts",
                     path.name, same.sum(), len(same))
            return published, var, controls, "table X, gene names from points/transcripts"
        log.warning("%s: the published X disagrees with the transcripts: using counts rebuilt from them",
                    path.name)
    return rebuilt, var, controls, "rebuilt from points/transcripts"


def read_xenium_zarr(path: str | Path) -> SampleParts:
    """A Xenium sample already converted to SpatialData, H&E registered inside (see module doc)."""
    path = Path(path)
    sdata = read_spatialdata(path)
    if not sdata.tables:
        raise InputError(path, "the SpatialData holds no table")
    table = sdata.tables["table"] if "table" in sdata.tables else next(iter(sdata.tables.values()))
    if "spatial" not in table.obsm:
        raise InputError(path, "the table has no obsm['spatial'] (cell centroids)")
    if "cell_id" not in table.obs:
        table.obs["cell_id"] = table.obs_names
    image_name = find_he_image(sdata, path)
    cells_name = find_cells_element(sdata, table, path)
    vendor_to_he, space = vendor_to_he_from_sdata(sdata, image_name, cells_name, path)
    counts, var, controls, counts_source = table_counts(sdata, table, path)

    levels = _levels(sdata.images[image_name])
    _, height, width = levels[0].shape
    xy_um = np.asarray(table.obsm["spatial"], dtype=np.float64)
    check_derived_mpp(1 / affine_scale(vendor_to_he), path, f"registration of images/{image_name}")
    check_in_image(apply_affine(vendor_to_he, xy_um), (width, height), path)
    obs = table.obs[[c for c in KEEP_OBS if c in table.obs.columns]].copy()
    if controls is not None:
        obs["control_transcripts"] = controls
    radius = (np.sqrt(table.obs["cell_area"].to_numpy(np.float64) / np.pi)
              if "cell_area" in table.obs else None)
    to_space = _xy_affine(sdata.shapes[cells_name], space)
    notes = {"mpp_source": f"registration of images/{image_name} in '{space}'",
             "counts_source": counts_source, "source_image_element": image_name,
             "source_coordinate_system": space, "source_cells_element": cells_name,
             "xenium_pixel_size_um": 1 / affine_scale(to_space)}
    if controls is not None:
        notes["n_control_transcripts"] = int(controls.sum())
    return SampleParts(
        counts=counts, var=var, cell_ids=table.obs["cell_id"].astype(str).to_numpy(), xy_vendor=xy_um,
        vendor_to_he=vendor_to_he, vendor_space="microns", slide_path=None,
        mpp=1 / affine_scale(vendor_to_he), unit_diameter_um=CELL_DIAMETER_UM, radius_um=radius, obs=obs,
        embedded_he=levels, uns=notes)
