"""A HEST-1k sample (:mod:`pastflow.hest_layout`) written from a :class:`SimulatedSlide`.

What ``st/<id>.h5ad`` holds, per ``st_technology`` (as the HEST library builds it):

- ``Visium``: 55 um spots on the 100 um hexagonal lattice (:mod:`pastflow.simulate.visium`),
  those over the tissue;
- ``Spatial Transcriptomics``: 100 um spots on a 200 um square grid, those over the tissue;
- ``Visium HD``: 128 um squares laid edge to edge on the image axes (HEST pools 16 um bins);
- ``Xenium``: 100 um squares pooling every transcript (controls and low quality too, as HEST
  does), with ``xenium_seg/<id>_xenium_cell_seg.parquet`` (one polygon per cell, full-res
  pixels, GeoParquet indexed by Xenium cell id) and ``transcripts/<id>_transcripts.parquet``
  (Xenium's columns plus ``he_x``, ``he_y``): each cell's counts as transcripts of quality
  >= 20, plus transcripts a reader must not count (low quality, negative-control probes,
  unassigned).

A spot's or square's counts sum the cells whose centres it covers; squares without counts
are dropped (HEST filters them). ``obsm["spatial"]`` and ``obs`` ``pxl_col_in_fullres`` /
``pxl_row_in_fullres`` are full-resolution pixels of ``wsis/<id>.tif`` (a generic pyramidal
TIFF recording its resolution). ``metadata/<id>.json`` carries HEST's keys; Visium HD gets
``spot_diameter`` and ``inter_spot_dist`` of 2 um and Xenium none, as in HEST_v1_1_0.csv.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from scipy import sparse

from pastflow.hest_layout import SPOT_UM, ST_TECHNOLOGIES, VISIUM, VISIUM_HD, XENIUM, HestPaths
from pastflow.simulate.slide import SimulatedSlide, simulate_slide
from pastflow.simulate.spaceranger import aggregate
from pastflow.simulate.tenx import spot_barcodes
from pastflow.simulate.tiff import write_pyramid
from pastflow.simulate.visium import spot_lattice

MIN_QV = 20.0  # Xenium's threshold for its cell matrix
# Transcripts a reader must leave out, per counted one: low quality, controls, unassigned.
LOW_QV_FRACTION, CONTROL_FRACTION, UNASSIGNED_FRACTION = 0.05, 0.02, 0.03
CELL_EDGE_UM = 2.0  # a cell polygon reaches this far beyond its nucleus
POLYGON_VERTICES = 24


@dataclass
class Units:
    """What a reader should find: one row per spot (or cell) of the sample."""

    ids: np.ndarray          # (n,) str
    xy_px: np.ndarray        # (n, 2) full-resolution pixels
    counts: sparse.csr_matrix  # (n, genes)
    genes: list[str]
    diameter_um: float


@dataclass
class HestSample:
    """The files of one simulated HEST sample and its truth."""

    paths: HestPaths
    st_technology: str
    slide: SimulatedSlide
    spots: Units             # the rows of st/<id>.h5ad
    cells: Units | None      # Xenium: the cells of xenium_seg/ with their counted transcripts


def simulate_hest_sample(root: str | Path, sample_id: str, patient: str, st_technology: str, *,
                         n_cells: int = 400, size_um: float = 600.0, mpp: float = 0.5,
                         n_genes: int = 60, seed: int = 0, progress: bool = False) -> HestSample:
    """Simulate one section of ``patient`` and write it under ``root`` in the HEST layout."""
    if st_technology not in ST_TECHNOLOGIES:
        raise ValueError(f"st_technology must be one of {ST_TECHNOLOGIES}, got {st_technology!r}")
    slide = simulate_slide(sample_id, patient, n_cells, seed=seed, mpp=mpp, n_genes=n_genes,
                           size_um=size_um, rotation_deg=1.5)
    counts = slide.counts(200.0)
    return write_hest_sample(Path(root), sample_id, slide, counts, st_technology, progress)


def write_hest_sample(root: Path, sample_id: str, slide: SimulatedSlide,
                      counts: sparse.csr_matrix, st_technology: str,
                      progress: bool = False) -> HestSample:
    """Write ``slide`` (cells with ``counts``) as HEST sample ``sample_id`` under ``root``."""
    paths = HestPaths(root, sample_id)
    for path in (paths.st, paths.wsi, paths.metadata):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid(paths.wsi, slide.renderer(), slide.geometry.mpp, layout="generic",
                  description=f"pastflow simulated HEST sample {sample_id}", progress=progress)
    genes = list(slide.expression.genes)
    cells = None
    if st_technology == XENIUM:
        transcripts, cells = write_xenium_cells(paths, slide, counts, genes)
        spots = pooled_spots(transcripts["he_x"], transcripts["he_y"], transcripts["feature_name"],
                             st_technology, slide.geometry.mpp)
    elif st_technology == VISIUM_HD:
        spots = pooled_cells(slide, counts, genes, st_technology)
    else:
        spots = lattice_spots(slide, counts, genes, st_technology)
    write_st_table(paths.st, spots, slide.geometry.mpp, paths.wsi)
    write_metadata(paths.metadata, slide, st_technology, len(spots.ids))
    return HestSample(paths, st_technology, slide, spots, cells)


# ----------------------------------------------------------------------------- spots


def lattice_spots(slide: SimulatedSlide, counts: sparse.csr_matrix, genes: list[str],
                  st_technology: str) -> Units:
    """Visium's hexagonal lattice or ST's square grid, in the tissue frame; spots over tissue."""
    diameter, pitch = SPOT_UM[st_technology]
    if st_technology == VISIUM:
        lattice = spot_lattice(slide.width_um, slide.height_um)
        ids = np.array(spot_barcodes([f"{slide.sample}:{r}:{c}" for r, c in
                                      zip(lattice.array_row, lattice.array_col)]))
    else:
        n_x, n_y = int(slide.width_um // pitch), int(slide.height_um // pitch)
        col, row = np.meshgrid(np.arange(n_x), np.arange(n_y))
        lattice = pd.DataFrame({"array_row": row.ravel(), "array_col": col.ravel(),
                                "x_um": pitch / 2 + col.ravel() * pitch,
                                "y_um": pitch / 2 + row.ravel() * pitch})
        ids = np.array([f"{c + 1}x{r + 1}" for r, c in zip(lattice.array_row, lattice.array_col)])
    cell_xy = slide.cells[["x_um", "y_um"]].to_numpy()
    spot_xy = lattice[["x_um", "y_um"]].to_numpy()
    distance = np.linalg.norm(cell_xy[:, None, :] - spot_xy[None, :, :], axis=2)
    nearest = distance.argmin(axis=1)
    spot_of_cell = np.where(distance.min(axis=1) <= diameter / 2, nearest, -1)
    spot_counts = aggregate(counts, spot_of_cell, len(lattice))
    tissue = slide.fields.sample("tissue", lattice["x_um"], lattice["y_um"]) > 0
    keep = np.flatnonzero(np.asarray(tissue))
    x_px, y_px = slide.geometry.to_px(spot_xy[keep, 0], spot_xy[keep, 1])
    return Units(ids[keep], np.column_stack([x_px, y_px]), spot_counts[keep].tocsr(), genes, diameter)


def square_of(x_px: np.ndarray, y_px: np.ndarray, side_px: float):
    """HEST's pooling: squares of ``side_px`` from the points' top-left corner, on the image
    axes. Returns each point's square (row-major index), the grid width and the origin."""
    x0, y0 = float(np.min(x_px)), float(np.min(y_px))
    n_x = int(np.ceil((np.max(x_px) - x0) / side_px)) + 1
    col = np.floor((x_px - x0) / side_px).astype(np.int64)
    row = np.floor((y_px - y0) / side_px).astype(np.int64)
    return row * n_x + col, n_x, (x0, y0)


def _pooled_units(square: np.ndarray, n_x: int, origin: tuple[float, float], side_px: float,
                  counts: sparse.csr_matrix, genes: list[str], side_um: float) -> Units:
    n = int(square.max()) + 1
    pooled = aggregate(counts, square, n)
    keep = np.flatnonzero(np.asarray(pooled.sum(axis=1)).ravel() > 0)
    row, col = keep // n_x, keep % n_x
    xy = np.column_stack([origin[0] + (col + 0.5) * side_px, origin[1] + (row + 0.5) * side_px])
    ids = np.array([f"{r:03d}x{c:03d}" for r, c in zip(row, col)])
    return Units(ids, xy, pooled[keep].tocsr(), genes, side_um)


def pooled_cells(slide: SimulatedSlide, counts: sparse.csr_matrix, genes: list[str],
                 st_technology: str) -> Units:
    """Cells' counts pooled into HEST's squares by the cell centres (Visium HD)."""
    side_um = SPOT_UM[st_technology][0]
    side_px = side_um / slide.geometry.mpp
    square, n_x, origin = square_of(slide.cells["x_px"].to_numpy(), slide.cells["y_px"].to_numpy(),
                                    side_px)
    return _pooled_units(square, n_x, origin, side_px, counts, genes, side_um)


def pooled_spots(x_px, y_px, features, st_technology: str, mpp: float) -> Units:
    """Every transcript pooled into HEST's squares (Xenium), features as HEST keeps them."""
    side_um = SPOT_UM[st_technology][0]
    side_px = side_um / mpp
    square, n_x, origin = square_of(np.asarray(x_px), np.asarray(y_px), side_px)
    codes, names = pd.factorize(np.asarray(features))
    one_hot = sparse.csr_matrix((np.ones(len(codes), np.float32), (np.arange(len(codes)), codes)),
                                shape=(len(codes), len(names)))
    return _pooled_units(square, n_x, origin, side_px, one_hot, list(names), side_um)


# ----------------------------------------------------------------------------- Xenium cells


def _wkb_polygon(ring: np.ndarray) -> bytes:
    """A closed ring ``(k, 2)`` as a WKB Polygon (little endian), as GeoParquet stores it."""
    return struct.pack("<BIII", 1, 3, 1, len(ring)) + np.ascontiguousarray(ring, "<f8").tobytes()


def cell_polygons(slide: SimulatedSlide) -> tuple[list[bytes], np.ndarray]:
    """One regular polygon per cell around its centre (full-res px), and its area (px^2)."""
    semi = slide.bank.semi_axes[slide.cells["shape"].to_numpy()]
    radius_px = (np.sqrt(semi.prod(axis=1)) + CELL_EDGE_UM) / slide.geometry.mpp
    angle = 2 * np.pi * np.arange(POLYGON_VERTICES + 1) / POLYGON_VERTICES
    unit = np.column_stack([np.cos(angle), np.sin(angle)])
    centres = slide.cells[["x_px", "y_px"]].to_numpy()
    rings = centres[:, None, :] + radius_px[:, None, None] * unit[None]
    area = 0.5 * POLYGON_VERTICES * radius_px ** 2 * np.sin(2 * np.pi / POLYGON_VERTICES)
    return [_wkb_polygon(r) for r in rings], area


def write_geoparquet(path: Path, index: np.ndarray, geometry: list[bytes]) -> None:
    """Polygons as GeoParquet 1.0 (WKB, no CRS: pixels), the index stored as geopandas
    stores it."""
    frame = pd.DataFrame({"geometry": geometry}, index=pd.Index(index))
    table = pa.Table.from_pandas(frame, preserve_index=True)
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                        "crs": None}}}
    table = table.replace_schema_metadata({**table.schema.metadata, b"geo": json.dumps(geo).encode()})
    pq.write_table(table, path)


def write_xenium_cells(paths: HestPaths, slide: SimulatedSlide, counts: sparse.csr_matrix,
                       genes: list[str]) -> tuple[pd.DataFrame, Units]:
    """``xenium_seg/`` and ``transcripts/`` of the sample; returns the transcripts and the
    cells' truth (counts = the counted transcripts only)."""
    rng = slide.rng("hest-transcripts")
    ids = slide.cells["cell_id"].astype(str).to_numpy()
    coo = counts.tocoo()
    cell = np.repeat(coo.row, coo.data.astype(np.int64))
    gene = np.asarray(genes, dtype=object)[np.repeat(coo.col, coo.data.astype(np.int64))]
    qv = np.minimum(MIN_QV + rng.exponential(10.0, cell.size), 40.0)
    n = cell.size
    # Left out by a reader: low quality and control transcripts in cells, unassigned ones.
    low = rng.integers(0, len(ids), int(LOW_QV_FRACTION * n))
    ctrl = rng.integers(0, len(ids), int(CONTROL_FRACTION * n))
    free = rng.integers(0, len(ids), int(UNASSIGNED_FRACTION * n))
    owner = np.concatenate([cell, low, ctrl, free])
    table = pd.DataFrame({
        "transcript_id": np.arange(owner.size, dtype=np.uint64) + np.uint64(281474976710656),
        "cell_id": np.concatenate([ids[cell], ids[low], ids[ctrl],
                                   np.full(free.size, "UNASSIGNED", dtype=object)]),
        "feature_name": np.concatenate([
            gene, np.asarray(genes, dtype=object)[rng.integers(0, len(genes), low.size)],
            np.array([f"NegControlProbe_{i % 10:05d}" for i in range(ctrl.size)], dtype=object),
            np.asarray(genes, dtype=object)[rng.integers(0, len(genes), free.size)]]),
        "qv": np.concatenate([qv, rng.uniform(5.0, MIN_QV - 0.1, low.size),
                              np.full(ctrl.size + free.size, 30.0)]).astype(np.float32),
    })
    # Transcripts lie within a few microns of their cell's centre (free ones near a random cell).
    offset = rng.normal(0.0, 1.5, (owner.size, 2)).clip(-3, 3)
    x_um = slide.cells["x_um"].to_numpy()[owner] + offset[:, 0]
    y_um = slide.cells["y_um"].to_numpy()[owner] + offset[:, 1]
    he_x, he_y = slide.geometry.to_px(x_um, y_um)
    table = table.assign(x_location=x_um.astype(np.float32), y_location=y_um.astype(np.float32),
                         z_location=np.float32(15.0), overlaps_nucleus=np.uint8(1),
                         he_x=he_x, he_y=he_y)
    for path in (paths.cell_seg, paths.transcripts):
        path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(paths.transcripts, index=False)
    polygons, area_px = cell_polygons(slide)
    write_geoparquet(paths.cell_seg, ids, polygons)
    cells = Units(ids, slide.cells[["x_px", "y_px"]].to_numpy(), counts.tocsr(), genes,
                  float(np.median(2 * np.sqrt(area_px / np.pi)) * slide.geometry.mpp))
    return table, cells


# ----------------------------------------------------------------------------- files


def write_st_table(path: Path, spots: Units, mpp: float, wsi: Path) -> None:
    """``st/<id>.h5ad`` as HEST writes it, with its downscaled image in ``uns["spatial"]``."""
    import anndata as ad

    with tifffile.TiffFile(wsi) as tif:
        levels = tif.series[0].levels
        thumb, full_width = levels[-1].asarray(), levels[0].shape[1]
    obs = pd.DataFrame({"in_tissue": 1, "pxl_col_in_fullres": spots.xy_px[:, 0],
                        "pxl_row_in_fullres": spots.xy_px[:, 1]}, index=pd.Index(spots.ids))
    adata = ad.AnnData(X=spots.counts.astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=pd.Index(spots.genes)))
    adata.obsm["spatial"] = spots.xy_px
    adata.uns["spatial"] = {"ST": {
        "images": {"downscaled_fullres": thumb},
        "scalefactors": {"spot_diameter_fullres": spots.diameter_um / mpp,
                         "tissue_downscaled_fullres_scalef": thumb.shape[1] / full_width}}}
    adata.write_h5ad(path)


def write_metadata(path: Path, slide: SimulatedSlide, st_technology: str, n_spots: int) -> None:
    """``metadata/<id>.json`` with HEST's keys (NaN where HEST_v1_1_0.csv has none)."""
    diameter, pitch = (2.0, 2.0) if st_technology == VISIUM_HD else SPOT_UM[st_technology]
    if st_technology == XENIUM:
        diameter = pitch = float("nan")
    meta = {
        "dataset_title": "pastflow simulated HEST-layout sample",
        "id": slide.sample,
        "image_filename": f"{slide.sample}.tif",
        "organ": "Breast", "disease_state": "Cancer", "oncotree_code": "IDC",
        "species": "Homo sapiens", "patient": slide.patient.patient,
        "st_technology": st_technology,
        "inter_spot_dist": pitch, "spot_diameter": diameter, "spots_under_tissue": n_spots,
        "preservation_method": "FFPE", "nb_genes": len(slide.expression.genes),
        "pixel_size_um_embedded": slide.geometry.mpp,
        "pixel_size_um_estimated": slide.geometry.mpp,
        "magnification": "20x" if slide.geometry.mpp > 0.35 else "40x",
        "fullres_px_width": slide.geometry.width_px, "fullres_px_height": slide.geometry.height_px,
        "tissue": "Breast", "hest_version_added": "simulated",
    }
    path.write_text(json.dumps(meta, indent=1))
