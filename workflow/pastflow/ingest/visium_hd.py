"""10x Visium HD: a Space Ranger HD ``outs/`` folder and its H&E, read as cells or as bins.

Cells (the default, when ``binned_outputs/square_002um`` exists): nuclei segmented on the H&E
are grown on the 2 um bin grid and the bins summed into them (:mod:`pastflow.ingest.bins_to_cells`);
unit ``"cell"``. The 2 um files are read as Space Ranger writes them, without AnnData (a
slide has ~11 million 2 um bins): ``filtered_feature_bc_matrix.h5`` in chunks of bins,
``spatial/tissue_positions.parquet`` in batches, ``spatial/scalefactors_json.json``.

Bins (no 2 um bins, ``cells: false``, or an H&E too coarse to segment): ``spatialdata_io.visium_hd``
reads ``binned_outputs/square_008um`` (or ``016um``): filtered matrix, bin centres in
full-resolution pixels, scale factors with ``microns_per_pixel``; unit ``"spot"`` of the bin's size.

Vendor space: microns on the bin grid, bin ``(array_row i, array_col j)`` of side ``b``
centred at ``((j + 0.5) b, (i + 0.5) b)`` (the 2, 8 and 16 um grids share it). ``vendor_to_he``
is the least-squares affine from those microns to the bin centres' pixels (Space Ranger's
registration, nearly exact: its rms residual is kept in ``uns``), times the image scale when
the H&E is a downsampled copy.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pastflow.errors import InputError
from pastflow.ingest.bins_to_cells import (
    expand_bin_labels,
    grid_to_microns,
    label_footprints,
    paint_nuclei,
    parse_bin_barcodes,
    sum_bins_into_cells,
)
from pastflow.ingest.common import (
    SampleParts,
    affine_scale,
    apply_affine,
    check_in_image,
    choose_mpp,
    fit_affine,
    looks_like_counts,
)
from pastflow.ingest.settings import VisiumHDSettings
from pastflow.ingest.tenx_h5 import CHUNK_BARCODES, FeatureBarcodeH5
from pastflow.ingest.visium import image_scale, read_scalefactors

log = logging.getLogger(__name__)

CELL_BIN_UM = 2  # the bins summed into cells
SPOT_BIN_UM = (8, 16)  # bins read as spots, finest first
MAX_FIT_RMS_BINS = 0.25  # a grid -> pixel fit worse than this is not a registration
MAX_SEGMENTATION_MPP = 1.0  # a coarser H&E (e.g. tissue_hires_image.png) shows no nuclei
FIT_SAMPLE = 200_000  # bins whose positions fit the grid -> pixel affine
POSITION_BATCH = 1_000_000  # parquet rows read at a time
POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres")


def bin_folder(outs: Path, bin_um: int) -> Path:
    return outs / "binned_outputs" / f"square_{bin_um:03d}um"


def bin_grid_microns(array_row: np.ndarray, array_col: np.ndarray, bin_um: float) -> np.ndarray:
    """``(n, 2)`` bin centres ``[x, y]`` in bin-grid microns."""
    grid = np.column_stack([np.asarray(array_col, np.float64), np.asarray(array_row, np.float64)])
    return apply_affine(grid_to_microns(bin_um), grid)


def read_visium_hd(outs: str | Path, image: str | Path, sample: str,
                   settings: VisiumHDSettings = VisiumHDSettings(), mpp: float | None = None,
                   progress: bool = True, max_detection_mm2: float | None = None) -> SampleParts:
    """A Space Ranger HD ``outs/`` folder with its H&E: cells from 2 um bins when there are
    some and ``settings.cells``, else bins as spots (``mpp``: last-resort H&E resolution;
    ``max_detection_mm2``: the nucleus detection's area budget, ``ingest.max_detection_mm2``)."""
    outs, image = Path(outs), Path(image)
    if settings.cells:
        if bin_folder(outs, CELL_BIN_UM).is_dir():
            parts = read_visium_hd_cells(outs, image, settings, mpp=mpp, progress=progress,
                                         max_detection_mm2=max_detection_mm2)
            if parts is not None:
                return parts
        else:
            log.info("%s: no 2 um bins (%s): reading bins as spots", outs,
                     bin_folder(outs, CELL_BIN_UM).relative_to(outs))
    return read_visium_hd_bins(outs, image, sample, spot_bin_um(outs, settings.bin_um), mpp=mpp)


def spot_bin_um(outs: Path, preferred: int) -> int:
    """``preferred`` when its folder exists, else the finest bin size present."""
    present = [b for b in SPOT_BIN_UM if bin_folder(outs, b).is_dir()]
    if not present:
        raise InputError(outs, "not a Visium HD output folder: no binned_outputs/square_002um, "
                               "square_008um or square_016um")
    if preferred in present:
        return preferred
    log.warning("%s: no %d um bins; reading the %d um bins as spots", outs, preferred, present[0])
    return present[0]


# --------------------------------------------------------------------------- registration


@dataclass
class Registration:
    """Bin-grid microns -> H&E level-0 pixels, and the H&E resolution."""

    vendor_to_he: np.ndarray
    mpp: float
    mpp_source: str
    image_note: str
    image_scale: float
    fit_rms_px: float


def register_bins(bin_dir: Path, outs: Path, image: Path, xy_um: np.ndarray, xy_fullres: np.ndarray,
                  bin_um: int, mpp: float | None) -> Registration:
    """Fit the grid -> full-resolution affine on bins ``xy_um`` / ``xy_fullres`` and place it on ``image``."""
    from pastflow.slide import open_slide

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
    return Registration(vendor_to_he, mpp_value, mpp_source, note, scale, rms)


# --------------------------------------------------------------------------- bins as spots


def read_visium_hd_bins(outs: str | Path, image: str | Path, sample: str, bin_um: int,
                        mpp: float | None = None) -> SampleParts:
    """Visium HD bins of ``bin_um`` microns as spots, with their H&E."""
    import spatialdata_io

    outs, image = Path(outs), Path(image)
    bin_dir = bin_folder(outs, bin_um)
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
    reg = register_bins(bin_dir, outs, image, xy_um, xy_fullres, bin_um, mpp)
    var = table.var[[c for c in ("gene_ids", "feature_types") if c in table.var.columns]]
    obs = table.obs[[c for c in ("in_tissue", "array_row", "array_col") if c in table.obs.columns]]
    return SampleParts(
        counts=table.X, var=var, cell_ids=table.obs_names.astype(str).to_numpy(), xy_vendor=xy_um,
        vendor_to_he=reg.vendor_to_he, vendor_space="microns", slide_path=image, mpp=reg.mpp,
        unit="spot", unit_diameter_um=float(bin_um), radius_um=np.full(len(xy_um), bin_um / 2),
        obs=obs, x_is_counts=looks_like_counts(table.X),
        uns={"mpp_source": reg.mpp_source, "image_note": reg.image_note, "image_scale": reg.image_scale,
             "bin_um": bin_um, "vendor_fit_rms_px": reg.fit_rms_px})


# --------------------------------------------------------------------------- 2 um bins -> cells


def read_bin_positions(path: Path, bin_um: int) -> tuple[tuple[int, int], pd.DataFrame]:
    """Grid shape ``(n_rows, n_cols)`` from ``tissue_positions.parquet``, and up to about
    :data:`FIT_SAMPLE` of its in-tissue bins, evenly spread (every bin's if none is in tissue).

    Read in batches: the file has a row per bin (~11 million at 2 um).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(path, "missing: Space Ranger writes every bin's position here")
    try:
        file = pq.ParquetFile(path)
        missing = [c for c in POSITION_COLUMNS if c not in file.schema_arrow.names]
        if missing:
            raise InputError(path, f"lacks the column(s) {', '.join(missing)}")
        step = max(1, file.metadata.num_rows // FIT_SAMPLE)
        n_rows = n_cols = 0
        picked, seen = [], 0
        for batch in file.iter_batches(batch_size=POSITION_BATCH, columns=list(POSITION_COLUMNS)):
            n_rows = max(n_rows, int(pc.max(batch.column("array_row")).as_py() or 0) + 1)
            n_cols = max(n_cols, int(pc.max(batch.column("array_col")).as_py() or 0) + 1)
            picked.append(batch.take(pa.array(np.arange((-seen) % step, batch.num_rows, step))).to_pandas())
            seen += batch.num_rows
    except (OSError, pa.ArrowException) as err:
        raise InputError(path, f"not a readable parquet file ({err})") from err
    positions = pd.concat(picked, ignore_index=True) if picked else pd.DataFrame(columns=POSITION_COLUMNS)
    if positions.empty:
        raise InputError(path, "holds no bins")
    parsed = parse_bin_barcodes(positions["barcode"].to_numpy(), bin_um)
    if parsed is None or not (np.array_equal(parsed[0], positions["array_row"])
                              and np.array_equal(parsed[1], positions["array_col"])):
        raise InputError(path, f"barcodes and array_row / array_col disagree, or are not {bin_um} um "
                               f"bin barcodes (e.g. {positions['barcode'].iloc[0]!r})")
    in_tissue = positions[positions["in_tissue"] == 1]
    return (n_rows, n_cols), (in_tissue if len(in_tissue) else positions)


def read_bin_chunks(matrix: FeatureBarcodeH5, shape: tuple[int, int], positions: str | Path,
                    progress: bool):
    """``(array_row, array_col, counts)`` of the matrix's bins, a chunk at a time."""
    from pastflow.progress import progress_bar

    for barcodes, counts in progress_bar(matrix.chunks(), desc=f"bins {matrix.path.parent.name}",
                                         total=-(-matrix.n_barcodes // CHUNK_BARCODES),
                                         unit="chunk", enabled=progress):
        parsed = parse_bin_barcodes(barcodes, CELL_BIN_UM)
        if parsed is None:
            raise InputError(matrix.path, f"barcodes are not Space Ranger {CELL_BIN_UM} um bin barcodes "
                                          f"(s_{CELL_BIN_UM:03d}um_RRRRR_CCCCC-1; e.g. {barcodes[0]!r})")
        rows, cols = parsed
        if len(rows) and (rows.max() >= shape[0] or cols.max() >= shape[1]):
            raise InputError(matrix.path, f"bins beyond the {shape[0]} x {shape[1]} grid of {positions}")
        yield rows, cols, counts


@dataclass
class BinCells:
    """Cells on the 2 um bin grid: ``nuclei`` and ``cells`` are ``int32 (n_rows, n_cols)`` labels
    (0 = none; a cell keeps its nucleus' label, up to ``n_labels``)."""

    registration: Registration
    nuclei: np.ndarray
    cells: np.ndarray
    n_labels: int
    positions: Path  # the tissue_positions.parquet the grid comes from


def segment_bin_cells(outs: Path, image: Path, expand_um: float, mpp: float | None = None,
                      progress: bool = True,
                      max_detection_mm2: float | None = None) -> BinCells | None:
    """Nuclei segmented on the H&E, painted on the 2 um bin grid and grown by ``expand_um``.

    Returns None when the H&E is too coarse to segment or shows no nucleus over the bins.
    """
    from pastflow.ingest.nuclei import iter_nucleus_tiles
    from pastflow.slide import open_slide

    bin_dir = bin_folder(outs, CELL_BIN_UM)
    positions_path = bin_dir / "spatial" / "tissue_positions.parquet"
    shape, positions = read_bin_positions(positions_path, CELL_BIN_UM)
    xy_um = bin_grid_microns(positions["array_row"], positions["array_col"], CELL_BIN_UM)
    xy_fullres = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    reg = register_bins(bin_dir, outs, image, xy_um, xy_fullres, CELL_BIN_UM, mpp)
    if reg.mpp > MAX_SEGMENTATION_MPP:
        log.warning("%s: %.2f um/px is too coarse to segment nuclei: reading bins as spots",
                    image, reg.mpp)
        return None
    grid_to_he = reg.vendor_to_he @ grid_to_microns(CELL_BIN_UM)
    with open_slide(image) as slide:
        tiles = iter_nucleus_tiles(slide, reg.mpp, progress=progress,
                                   max_area_mm2=max_detection_mm2)
        nuclei, n_labels = paint_nuclei(tiles, shape, grid_to_he)
    if not nuclei.any():
        log.warning("%s: no nucleus found over the bins: reading bins as spots", image)
        return None
    cells = expand_bin_labels(nuclei, expand_um / CELL_BIN_UM)
    return BinCells(reg, nuclei, cells, n_labels, positions_path)


def read_visium_hd_cells(outs: Path, image: Path, settings: VisiumHDSettings,
                         mpp: float | None = None, progress: bool = True,
                         max_detection_mm2: float | None = None) -> SampleParts | None:
    """Cells from the 2 um bins (:func:`segment_bin_cells`), each the sum of its bins' counts.

    Cell ids are ``hdcell_`` + the label on the grid. Returns None (the caller reads bins as
    spots) when there are no nuclei to grow. Raises :class:`InputError` for missing or broken
    2 um files, naming them, before the segmentation starts.
    """
    bin_dir = bin_folder(outs, CELL_BIN_UM)
    with FeatureBarcodeH5(bin_dir / "filtered_feature_bc_matrix.h5") as matrix:
        grid = segment_bin_cells(outs, image, settings.expand_um, mpp, progress,
                                 max_detection_mm2)
        if grid is None:
            return None
        chunks = read_bin_chunks(matrix, grid.cells.shape, grid.positions, progress)
        counts, tally = sum_bins_into_cells(chunks, grid.cells, grid.n_labels)
        var = matrix.var
    reg = grid.registration
    n_bins, centre = label_footprints(grid.cells, grid.n_labels)
    nucleus_bins, _ = label_footprints(grid.nuclei, grid.n_labels)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    found = n_bins > 0
    keep = found & (totals >= settings.min_counts)
    if not keep.any():
        raise InputError(bin_dir, f"none of the {int(found.sum())} cells has {settings.min_counts} "
                                  "counts or more (config key ingest.visium_hd.min_counts)")
    diameter_um = 2 * np.sqrt(n_bins[keep] * CELL_BIN_UM**2 / np.pi)  # of the disk of equal area
    dropped_counts = float(totals[found & ~keep].sum())
    log.info("%s: %d nuclei -> %d cells (%d under %d counts dropped); %.1f%% of %d in-tissue bins "
             "and %.1f%% of counts in no cell", outs, int(found.sum()), int(keep.sum()),
             int((found & ~keep).sum()), settings.min_counts, 100 * tally.bins_in_no_cell_fraction,
             tally.bins, 100 * tally.counts_in_no_cell_fraction)
    return SampleParts(
        counts=counts[keep], var=var, cell_ids=np.char.add("hdcell_", np.char.zfill(
            (np.flatnonzero(keep) + 1).astype(str), 7)),
        xy_vendor=apply_affine(grid_to_microns(CELL_BIN_UM), centre[keep]),
        vendor_to_he=reg.vendor_to_he, vendor_space="microns", slide_path=image, mpp=reg.mpp,
        unit="cell", unit_diameter_um=float(np.median(diameter_um)), radius_um=diameter_um / 2,
        obs=pd.DataFrame({"n_bins": n_bins[keep], "nucleus_bins": nucleus_bins[keep]}),
        x_is_counts=looks_like_counts(counts),
        uns={"mpp_source": reg.mpp_source, "image_note": reg.image_note, "image_scale": reg.image_scale,
             "bin_um": CELL_BIN_UM, "vendor_fit_rms_px": reg.fit_rms_px,
             "cells_from": "nuclei segmented on the H&E (pastflow.ingest.nuclei) grown on the 2 um "
                           "bin grid, bins summed (pastflow.ingest.bins_to_cells)",
             "expand_um": float(settings.expand_um), "min_counts": int(settings.min_counts),
             "cells_dropped_min_counts": int((found & ~keep).sum()),
             "counts_dropped_fraction": dropped_counts / tally.counts if tally.counts else 0.0,
             "bins_in_tissue": int(tally.bins),
             "bins_in_no_cell_fraction": tally.bins_in_no_cell_fraction,
             "counts_in_no_cell_fraction": tally.counts_in_no_cell_fraction})
