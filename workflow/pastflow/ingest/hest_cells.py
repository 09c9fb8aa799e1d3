"""Cells of a HEST Xenium sample: the instrument's segmentation and transcripts, as HEST aligned them.

- ``xenium_seg/<id>_xenium_cell_seg.parquet``: GeoParquet, one polygon per cell in
  full-resolution pixels of the WSI (HEST warped Xenium's DAPI segmentation onto the H&E);
  the Xenium ``cell_id`` is the index (or a ``cell_id`` column).
- ``transcripts/<id>_transcripts.parquet``: Xenium's transcript table (``cell_id``,
  ``feature_name``, ``qv``, ``x_location`` ... in microns) plus ``he_x``, ``he_y`` (H&E
  pixels). ``cell_id`` is ``"UNASSIGNED"`` (or ``-1`` before XOA 2) outside cells.

A cell's counts are its transcripts of genes (not negative-control probes or codewords:
``is_gene`` when the table has it, else the feature names' prefixes) with ``qv >= min_qv``,
as in Xenium's own ``cell_feature_matrix``. Its position is the centroid of its polygon.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.errors import InputError
from pastflow.hest_layout import HestPaths
from pastflow.ingest.common import SampleParts, check_in_image
from pastflow.progress import progress_bar

log = logging.getLogger(__name__)

TRANSCRIPT_COLUMNS = ("cell_id", "feature_name")
# Xenium features that are not genes, for transcript tables without `is_gene` (XOA < 3).
CONTROL_PREFIXES = ("NegControlProbe_", "NegControlCodeword_", "UnassignedCodeword_",
                    "DeprecatedCodeword_", "BLANK_", "Intergenic_Region")
BATCH_ROWS = 1 << 20


def read_cell_segmentation(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cell ids (n,) str, centroids (n, 2) px, areas (n,) px^2)`` of a GeoParquet of cells."""
    import geopandas as gpd
    import shapely

    try:
        cells = gpd.read_parquet(path)
    except (ValueError, OSError, TypeError) as err:  # pyarrow and geopandas errors on a bad file
        raise InputError(path, f"not a GeoParquet of cell polygons ({err})") from err
    ids = cells["cell_id"] if "cell_id" in cells.columns else cells.index.to_series()
    ids = pd.Index(_as_text(ids.to_numpy()))
    if not ids.is_unique:
        raise InputError(path, f"cell ids are not unique (e.g. {ids[ids.duplicated()][:3].tolist()})")
    # Pixels, whatever CRS the file declares: shapely's planar geometry, not geopandas' CRS checks.
    shapes = np.asarray(cells.geometry.array, dtype=object)
    centroids = shapely.centroid(shapes)
    xy = np.column_stack([shapely.get_x(centroids), shapely.get_y(centroids)])
    return ids.to_numpy(), xy, shapely.area(shapes)


def _as_text(values: np.ndarray) -> np.ndarray:
    """Ids or names as str (Xenium writes bytes, ints or strings by version)."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _column_text(batch, name: str) -> np.ndarray:
    import pyarrow as pa

    column = batch.column(name)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        column = column.cast(pa.string())
    if pa.types.is_integer(column.type):
        return column.to_numpy(zero_copy_only=False).astype(str).astype(object)
    return column.to_numpy(zero_copy_only=False)


def count_transcripts(path: Path, cell_ids: np.ndarray, min_qv: float,
                      progress: bool = True) -> tuple[sparse.csr_matrix, list[str], dict]:
    """``(counts (n_cells, n_genes) CSR, gene names sorted, tallies)`` from a transcript table.

    Read a million rows at a time: a Xenium table holds tens of millions of transcripts.
    ``tallies``: transcripts counted, and those left out as unassigned, of low quality or
    of control features.
    """
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable Parquet transcript table ({err})") from err
    names = set(table.schema_arrow.names)
    missing = [c for c in TRANSCRIPT_COLUMNS if c not in names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}; a transcript table has "
                               "cell_id, feature_name, qv (and he_x, he_y)")
    if "qv" not in names:
        log.warning("%s: no qv column: every transcript is counted, whatever its quality", path)
    columns = list(TRANSCRIPT_COLUMNS) + [c for c in ("qv", "is_gene") if c in names]
    cell_index = pd.Index(cell_ids)
    genes: dict[str, int] = {}
    parts = []  # per batch, its (cell, gene) counts summed: one sum at the end, not per batch
    tallies = {"counted": 0, "unassigned": 0, "low_qv": 0, "control": 0}
    with progress_bar(total=table.metadata.num_rows, desc=f"counting {path.name}",
                      unit="transcript", unit_scale=True, enabled=progress) as bar:
        for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            bar.update(batch.num_rows)
            feature = _column_text(batch, "feature_name")
            gene = (batch.column("is_gene").to_numpy(zero_copy_only=False).astype(bool)
                    if "is_gene" in columns else
                    ~pd.Series(feature, dtype=object).str.startswith(CONTROL_PREFIXES).to_numpy())
            good = (batch.column("qv").to_numpy(zero_copy_only=False) >= min_qv
                    if "qv" in columns else np.ones(batch.num_rows, bool))
            cell = cell_index.get_indexer(_column_text(batch, "cell_id"))
            tallies["unassigned"] += int((cell < 0).sum())
            tallies["control"] += int(((cell >= 0) & ~gene).sum())
            tallies["low_qv"] += int(((cell >= 0) & gene & ~good).sum())
            keep = (cell >= 0) & gene & good
            codes, uniques = pd.factorize(feature[keep])
            column = np.array([genes.setdefault(g, len(genes)) for g in uniques], dtype=np.int64)
            batch_counts = sparse.coo_matrix(
                (np.ones(keep.sum(), np.float32), (cell[keep], column[codes])),
                shape=(len(cell_ids), len(genes))).tocsr().tocoo()
            parts.append((batch_counts.row, batch_counts.col, batch_counts.data))
            tallies["counted"] += int(keep.sum())
    rows, cols, values = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)
                          for i in range(3))
    total = sparse.coo_matrix((values.astype(np.float32), (rows, cols)),
                              shape=(len(cell_ids), len(genes))).tocsr()
    order = np.argsort(list(genes))
    return total[:, order], [list(genes)[i] for i in order], tallies


def read_hest_cells(paths: HestPaths, image: Path, size: tuple[int, int], mpp: float,
                    scale: float, min_qv: float, uns: dict, progress: bool = True) -> SampleParts:
    """A HEST Xenium sample as cells. ``mpp``: of the WSI; ``scale``: WSI px per full-res px."""
    cell_ids, xy, area_px = read_cell_segmentation(paths.cell_seg)
    counts, genes, tallies = count_transcripts(paths.transcripts, cell_ids, min_qv, progress)
    if not genes:
        raise InputError(paths.transcripts, f"no transcript of a gene with qv >= {min_qv:g} lies in "
                                            f"a cell of {paths.cell_seg.name}: do the cell ids match?")
    check_in_image(xy * scale, size, paths.cell_seg, what="cells")
    radius_um = np.sqrt(area_px / np.pi) * scale * mpp
    log.info("%s: %d cells, %d transcripts counted (left out: %d unassigned, %d below qv %g, "
             "%d of controls)", paths.sample_id, len(cell_ids), tallies["counted"],
             tallies["unassigned"], tallies["low_qv"], min_qv, tallies["control"])
    uns.update({"cells_source": str(paths.cell_seg.resolve()),
                "transcripts_source": str(paths.transcripts.resolve()), "min_qv": float(min_qv),
                "transcripts": tallies})
    return SampleParts(
        counts=counts, var=pd.DataFrame(index=pd.Index(genes)), cell_ids=cell_ids, xy_vendor=xy,
        vendor_to_he=np.diag([scale, scale, 1.0]), vendor_space="fullres_pixels",
        slide_path=image, mpp=mpp, unit="cell",
        unit_diameter_um=float(np.median(2 * radius_um)), radius_um=radius_um,
        obs=pd.DataFrame({"cell_area": np.pi * radius_um ** 2}), uns=uns)
