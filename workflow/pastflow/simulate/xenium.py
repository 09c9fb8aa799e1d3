"""Xenium Onboard Analysis 2.0 output bundle, plus the post-Xenium H&E and its alignment.

Files (what ``spatialdata_io.xenium`` reads for ``analysis_sw_version`` xenium-2.0.0):

- ``experiment.xenium``: run metadata (JSON), ``pixel_size`` 0.2125 um;
- ``cells.parquet``: one row per cell, centroids in microns;
- ``cell_feature_matrix.h5``: 10x feature-barcode matrix (genes + negative control probes);
- ``transcripts.parquet``: one row per decoded transcript (``qv >= 20`` ones are the counts);
- ``cell_boundaries.parquet``, ``nucleus_boundaries.parquet``: closed polygons in microns,
  with ``label_id`` (XOA >= 2.0);
- ``cells.zarr.zip``: zarr v2 store with ``cell_id`` (uint32 prefix, suffix), ``cell_summary``,
  nucleus / cell label masks at 0.2125 um/px and ``polygon_sets/{0,1}/cell_index``;
- ``morphology_focus/morphology_focus_0000.ome.tif``: DAPI, uint16, pyramidal OME-TIFF.

Beside the bundle: ``he.ome.tif`` (RGB JPEG OME-TIFF, levels in SubIFDs) and
``he_imagealignment.csv``, the 3x3 matrix in the 10x convention: it maps H&E pixel
coordinates ``[x, y, 1]`` to Xenium morphology-image pixels; multiply those by ``pixel_size``
for Xenium microns. ``spatialdata_io.xenium_aligned_image(he, csv)`` uses it as the H&E's
transform to the ``global`` (morphology pixel) coordinate system.

Xenium microns are the simulator's tissue frame; the H&E is rotated, scaled and shifted
against it, so the alignment is never the identity.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import ndimage, sparse
from skimage import segmentation

from pastflow.simulate.slide import SimulatedSlide
from pastflow.simulate.tenx import (
    GENE_EXPRESSION,
    feature_ids,
    xenium_cell_id_prefixes,
    write_feature_barcode_h5,
)
from pastflow.simulate.tiff import write_pyramid

log = logging.getLogger(__name__)

PIXEL_SIZE = 0.2125  # um per morphology pixel (Xenium's)
XOA_VERSION = "xenium-2.0.0.10"
EXPANSION_UM = 5.0  # nucleus expansion distance of XOA's default segmentation
N_NEG_PROBES = 10
DAPI_BY_KIND = {"tumour": 900, "fibroblast": 1400, "t_cell": 2200, "b_cell": 2000,
                "macrophage": 1200, "endothelial": 1400, "tumour_proliferating": 1900}
DAPI_BLUR_PX = 1.2  # optical blur of the DAPI image
EXPAND_BLOCK = 512  # px (even): label expansion runs block by block, skipping blocks of bare glass
# A whole slide's label images do not fit in memory (two of 12 GB at 500,000 cells): larger ones
# live in an unlinked scratch file that the kernel pages in and out (same values either way).
LABELS_IN_MEMORY_BYTES = 1 << 30
# Transcripts are made and written about this many at a time (a 500,000-cell slide has ~100
# million); a slide with fewer is one pass, as it always was.
TRANSCRIPT_CHUNK = 10_000_000


def alignment_matrix(slide: SimulatedSlide) -> np.ndarray:
    """3x3: H&E level-0 pixels -> Xenium morphology pixels (10x ``*_imagealignment.csv``)."""
    return np.diag([1 / PIXEL_SIZE, 1 / PIXEL_SIZE, 1.0]) @ slide.geometry.px_to_um


def _zeros_labels(shape: tuple[int, int], scratch: Path | None) -> np.ndarray:
    """A zeroed uint32 label image: in memory, or past :data:`LABELS_IN_MEMORY_BYTES` (and
    given a ``scratch`` folder) mapped from an unlinked sparse file there."""
    if scratch is None or shape[0] * shape[1] * 4 <= LABELS_IN_MEMORY_BYTES:
        return np.zeros(shape, dtype=np.uint32)  # calloc: pages never written cost nothing
    with tempfile.TemporaryFile(dir=scratch) as backing:  # the mapping keeps it alive
        return np.memmap(backing, dtype=np.uint32, mode="w+", shape=shape)


def _label_masks(slide: SimulatedSlide, scratch: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus and cell label images at :data:`PIXEL_SIZE` (label ``i + 1`` = cell row ``i``),
    whole-slide ones file-backed in ``scratch`` (:func:`_zeros_labels`).

    Nuclei are stamped from one raster per bank shape (placed to the nearest pixel); cells are
    the nuclei expanded by :data:`EXPANSION_UM`, each pixel going to the nearest nucleus
    (label images as in ``cells.zarr.zip``: background 0).
    """
    h = int(np.ceil(slide.height_um / PIXEL_SIZE))
    w = int(np.ceil(slide.width_um / PIXEL_SIZE))
    nuclei = _zeros_labels((h, w), scratch)
    bank = slide.bank
    stamps = {}
    cells = slide.cells
    cols = np.rint(cells["x_um"].to_numpy() / PIXEL_SIZE).astype(int)
    rows = np.rint(cells["y_um"].to_numpy() / PIXEL_SIZE).astype(int)
    for i, (r0, c0, s) in enumerate(zip(rows, cols, cells["shape"].to_numpy())):
        if s not in stamps:
            rad = int(np.ceil(bank.radius[s].max() / PIXEL_SIZE)) + 1
            v, u = np.mgrid[-rad:rad + 1, -rad:rad + 1] * PIXEL_SIZE
            inside = np.hypot(u, v) < bank.radius_at(np.full(u.shape, s), np.arctan2(v, u) % (2 * np.pi))
            stamps[s] = (rad, inside)
        rad, inside = stamps[s]
        a, b = max(r0 - rad, 0), min(r0 + rad + 1, h)
        c, d = max(c0 - rad, 0), min(c0 + rad + 1, w)
        if a >= b or c >= d:
            continue
        view = nuclei[a:b, c:d]
        view[inside[a - r0 + rad:b - r0 + rad, c - c0 + rad:d - c0 + rad]] = i + 1
    return nuclei, _expand_labels(nuclei, EXPANSION_UM / PIXEL_SIZE, _zeros_labels((h, w), scratch))


def _expand_labels(nuclei: np.ndarray, distance_px: float, out: np.ndarray | None = None) -> np.ndarray:
    """Cell labels: ``nuclei`` expanded by ``distance_px``, each pixel to the nearest nucleus.

    Block by block: a pixel's label comes from within ``distance_px``, so a block needs only
    that much halo (same result as the whole image, up to ties) and blocks with no nucleus
    within reach stay background untouched (glass, e.g. between TMA cores, costs nothing).
    """
    if out is None:  # (zeroed, like nuclei)
        out = np.zeros(nuclei.shape, dtype=nuclei.dtype)  # calloc: pages never written cost nothing
    h, w = nuclei.shape
    halo = 2 * (int(np.ceil(distance_px / 2)) + 1)  # even: blocks sit on the coarse grid below
    for y0 in range(0, h, EXPAND_BLOCK):
        for x0 in range(0, w, EXPAND_BLOCK):
            a, c = max(y0 - halo, 0), max(x0 - halo, 0)
            crop = nuclei[a:y0 + EXPAND_BLOCK + halo, c:x0 + EXPAND_BLOCK + halo]
            if not crop.any():
                continue
            # Expand on a 2x coarser grid (4x fewer pixels for the distance transform), then
            # restore the exact nuclei on top: cell borders land within one coarse pixel (0.43 um).
            grown = segmentation.expand_labels(crop[::2, ::2], distance=distance_px / 2)
            grown = np.repeat(np.repeat(grown, 2, axis=0), 2, axis=1)[:crop.shape[0], :crop.shape[1]]
            np.copyto(grown, crop, where=crop > 0)
            out[y0:y0 + EXPAND_BLOCK, x0:x0 + EXPAND_BLOCK] = \
                grown[y0 - a:y0 - a + EXPAND_BLOCK, x0 - c:x0 - c + EXPAND_BLOCK]
    return out


def _cell_polygons(slide: SimulatedSlide, cells_mask: np.ndarray, n_vertices: int = 24,
                   max_um: float = 16.0, chunk: int = 2048) -> list[np.ndarray]:
    """Closed cell outlines (``(n_vertices + 1, 2)`` microns) traced on the label image.

    Rays from each nucleus centre stop where they leave the cell's label region; the cell
    regions (nucleus expansions clipped by their neighbours) are star-shaped about the centre.
    """
    n = len(slide.cells)
    angles = 2 * np.pi * np.arange(n_vertices) / n_vertices
    steps = np.arange(0.0, max_um, PIXEL_SIZE / 2)
    ray_x = steps[None, None, :] * np.cos(angles)[None, :, None]
    ray_y = steps[None, None, :] * np.sin(angles)[None, :, None]
    cx_all = slide.cells["x_um"].to_numpy()
    cy_all = slide.cells["y_um"].to_numpy()
    h, w = cells_mask.shape
    radius = np.empty((n, n_vertices))
    # Cells from top to bottom: a chunk reads one band of the label image (a whole slide's is
    # paged from disk, :func:`_zeros_labels`); each cell's outline is its own either way.
    order = np.argsort(cy_all, kind="stable")
    for s in range(0, n, chunk):  # chunks of cells bound the (cells, rays, steps) temporaries
        rows = order[s:s + chunk]
        jj = np.clip(np.rint((cx_all[rows, None, None] + ray_x) / PIXEL_SIZE).astype(np.int64), 0, w - 1)
        ii = np.clip(np.rint((cy_all[rows, None, None] + ray_y) / PIXEL_SIZE).astype(np.int64), 0, h - 1)
        inside = cells_mask[ii, jj] == (rows + 1)[:, None, None]
        # Last step before the ray first leaves the region.
        first_out = np.where(inside.all(axis=2), steps.size, np.argmin(inside, axis=2))
        radius[rows] = steps[np.maximum(first_out - 1, 0)] + PIXEL_SIZE / 2
    x = cx_all[:, None] + radius * np.cos(angles)
    y = cy_all[:, None] + radius * np.sin(angles)
    polys = np.stack([x, y], axis=2)
    return [np.vstack([p, p[:1]]) for p in polys]


def _label_counts(labels: np.ndarray, n: int, rows: int = 1024) -> np.ndarray:
    """Pixels of each label ``1..n``, in bands of rows (bincount casts its input to int64)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    for r in range(0, labels.shape[0], rows):
        counts += np.bincount(labels[r:r + rows].ravel(), minlength=n + 1)
    return counts[1:]


def _boundaries_table(cell_ids: np.ndarray, polygons: list[np.ndarray]) -> pa.Table:
    lengths = np.array([len(p) for p in polygons])
    verts = np.concatenate(polygons).astype(np.float32)
    return pa.table({
        "cell_id": np.repeat(cell_ids, lengths),
        "vertex_x": verts[:, 0],
        "vertex_y": verts[:, 1],
        "label_id": np.repeat(np.arange(1, len(polygons) + 1, dtype=np.uint32), lengths),
    })


def _write_transcripts(path: Path, slide: SimulatedSlide, counts: sparse.csr_matrix,
                       genes: list[str], nuclei: np.ndarray, cells_mask: np.ndarray) -> tuple[int, np.ndarray]:
    """``transcripts.parquet``; past :data:`TRANSCRIPT_CHUNK` transcripts, from runs of cells
    holding about that many each, top to bottom (one random stream through them; rows grouped
    by band, as Xenium's are by field of view), so that memory stays bounded and each run reads
    one band of the label images. Returns the row count and per-cell ``overlaps_nucleus``
    totals."""
    per_cell = np.asarray(counts.sum(axis=1)).ravel().astype(np.int64)
    if per_cell.sum() <= TRANSCRIPT_CHUNK:  # one pass, one table
        table, nuclear = _transcripts(slide, counts, genes, nuclei, cells_mask)
        pq.write_table(table, path, compression="zstd")
        return table.num_rows, nuclear
    rng = slide.rng("transcripts")
    order = np.argsort(slide.cells["y_um"].to_numpy(), kind="stable")
    run = np.cumsum(per_cell[order]) // TRANSCRIPT_CHUNK  # each cell's run
    edges = [0, *np.flatnonzero(np.diff(run)) + 1, len(per_cell)]
    nuclear, rows = np.zeros(len(per_cell)), 0
    with pq.ParquetWriter(path, _TRANSCRIPT_SCHEMA, compression="zstd") as writer:
        for start, stop in zip(edges[:-1], edges[1:]):
            cells = order[start:stop]
            table, part = _transcripts(slide, counts[cells], genes, nuclei, cells_mask,
                                       rng=rng, cells=cells, first_row=rows)
            writer.write_table(table.cast(_TRANSCRIPT_SCHEMA))
            nuclear += part
            rows += table.num_rows
    return rows, nuclear


_TRANSCRIPT_SCHEMA = pa.schema([
    ("transcript_id", pa.uint64()), ("cell_id", pa.string()), ("overlaps_nucleus", pa.uint8()),
    ("feature_name", pa.string()), ("x_location", pa.float32()), ("y_location", pa.float32()),
    ("z_location", pa.float32()), ("qv", pa.float32()), ("fov_name", pa.string()),
    ("nucleus_distance", pa.float32()), ("codeword_index", pa.int32())])


def _transcripts(slide: SimulatedSlide, counts: sparse.csr_matrix, genes: list[str],
                 nuclei: np.ndarray, cells_mask: np.ndarray, *, rng: np.random.Generator | None = None,
                 cells: np.ndarray | None = None, first_row: int = 0) -> tuple[pa.Table, np.ndarray]:
    """One row per count, placed inside its cell, plus unassigned low-quality background.

    ``counts``: rows of the slide's cells ``cells`` (default: all); ``first_row``: transcripts
    made before (ids go on from there). Returns the table and per-cell ``overlaps_nucleus``
    totals (all cells of the slide).
    """
    rng = slide.rng("transcripts") if rng is None else rng
    coo = counts.tocoo()
    cell = np.repeat(coo.row, coo.data).astype(np.int64)
    if cells is not None:
        cell = cells[cell]
    gene = np.repeat(coo.col, coo.data).astype(np.int64)
    n = cell.size
    cx = slide.cells["x_um"].to_numpy()[cell]
    cy = slide.cells["y_um"].to_numpy()[cell]
    x = np.empty(n)
    y = np.empty(n)
    todo = np.arange(n)
    h, w = cells_mask.shape
    # Rejection sampling inside the cell's own label region.
    for _ in range(8):
        px = cx[todo] + rng.normal(0, 3.5, todo.size)
        py = cy[todo] + rng.normal(0, 3.5, todo.size)
        jj = np.clip((px / PIXEL_SIZE).round().astype(int), 0, w - 1)
        ii = np.clip((py / PIXEL_SIZE).round().astype(int), 0, h - 1)
        ok = cells_mask[ii, jj] == cell[todo] + 1
        x[todo[ok]], y[todo[ok]] = px[ok], py[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    x[todo], y[todo] = cx[todo], cy[todo]
    jj = np.clip((x / PIXEL_SIZE).round().astype(int), 0, w - 1)
    ii = np.clip((y / PIXEL_SIZE).round().astype(int), 0, h - 1)
    overlaps = (nuclei[ii, jj] == cell + 1).astype(np.uint8)
    qv = np.minimum(20.0 + rng.exponential(12.0, n), 40.0)

    # Background: ~3% extra decoded transcripts, unassigned, a third of them below qv 20.
    nb = int(0.03 * n)
    bx = rng.uniform(0, slide.width_um, nb)
    by = rng.uniform(0, slide.height_um, nb)
    bgene = rng.integers(0, len(genes), nb)
    bqv = np.where(rng.random(nb) < 0.33, rng.uniform(5, 19.9, nb), np.minimum(20 + rng.exponential(8, nb), 40))
    ids = slide.cells["cell_id"].to_numpy()
    table = pa.table({
        "transcript_id": np.arange(first_row + 1, first_row + n + nb + 1, dtype=np.uint64)
        + np.uint64(281474976710656),
        "cell_id": np.concatenate([ids[cell], np.full(nb, "UNASSIGNED")]),
        "overlaps_nucleus": np.concatenate([overlaps, np.zeros(nb, np.uint8)]),
        "feature_name": np.asarray(genes, dtype=object)[np.concatenate([gene, bgene])],
        "x_location": np.concatenate([x, bx]).astype(np.float32),
        "y_location": np.concatenate([y, by]).astype(np.float32),
        "z_location": rng.uniform(10.0, 22.0, n + nb).astype(np.float32),
        "qv": np.concatenate([qv, bqv]).astype(np.float32),
        "fov_name": np.full(n + nb, "A1"),
        "nucleus_distance": np.zeros(n + nb, np.float32),
        "codeword_index": np.concatenate([gene, bgene]).astype(np.int32),
    })
    per_cell_nuclear = np.bincount(cell, weights=overlaps, minlength=len(ids))
    return table, per_cell_nuclear


class _DapiTiles:
    """uint16 DAPI-like morphology image, tile by tile (a ``tiff.TileSource``): bright textured
    nuclei on a dim background.

    The noise is a periodic texture looked up by absolute pixel position, so a tile blurred
    with a halo matches its neighbours exactly; tiles of bare glass skip the blur. Memory stays
    at a few tiles whatever the slide size.
    """

    PERIOD = 1024  # px, period of the noise texture

    def __init__(self, slide: SimulatedSlide, nuclei: np.ndarray, tile: int = 512):
        kinds = slide.expression.kinds
        self.level = np.array([0] + [DAPI_BY_KIND[kinds[k]] for k in slide.cells["kind"]], dtype=np.float32)
        self.nuclei = nuclei
        self.height, self.width = nuclei.shape
        self.tile = tile
        self.halo = int(4.0 * DAPI_BLUR_PX + 0.5)  # gaussian_filter's radius at truncate=4
        noise = slide.rng("dapi").standard_normal((self.PERIOD, self.PERIOD), dtype=np.float32)
        self.noise = np.pad(noise, (0, tile + 2 * self.halo), mode="wrap")  # windows are slices

    def _noise(self, y0: int, y1: int, x0: int, x1: int, shift: int = 0) -> np.ndarray:
        oy, ox = (y0 + shift) % self.PERIOD, (x0 + shift) % self.PERIOD
        return self.noise[oy:oy + y1 - y0, ox:ox + x1 - x0]

    def render_tile(self, ty: int, tx: int) -> np.ndarray:
        t, r = self.tile, self.halo
        y0, x0 = ty * t, tx * t
        y1, x1 = min(y0 + t, self.height), min(x0 + t, self.width)
        a, b = max(y0 - r, 0), min(y1 + r, self.height)
        c, d = max(x0 - r, 0), min(x1 + r, self.width)
        labels = self.nuclei[a:b, c:d]
        img = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        if labels.any():
            nuc = self.level[labels] * (1 + 0.8 * self._noise(a, b, c, d))  # chromatin granularity
            img += ndimage.gaussian_filter(nuc, DAPI_BLUR_PX)[y0 - a:y1 - a, x0 - c:x1 - c]
        # Background: the texture at another offset, independent of the chromatin noise.
        img += 60 + 15 * self._noise(y0, y1, x0, x1, shift=self.PERIOD // 2)
        out = np.zeros((t, t), dtype=np.uint16)
        out[:y1 - y0, :x1 - x0] = np.clip(img, 0, 65535)
        return out


def _write_cells_zarr(path: Path, slide: SimulatedSlide, prefixes: np.ndarray, summary: np.ndarray,
                      nuclei: np.ndarray, cells_mask: np.ndarray) -> None:
    """``cells.zarr.zip``: a zip of a zarr v2 directory store, as XOA writes it."""
    import zarr

    n = len(slide.cells)
    columns = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x",
               "nucleus_centroid_y", "nucleus_area", "z_level", "nucleus_count"]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2, attributes={
            "major_version": 5, "minor_version": 0, "number_cells": n,
            "polygon_set_names": ["nucleus", "cell"],
            "polygon_set_display_names": ["Nucleus boundaries", "Cell boundaries"],
            "spatial_units": "microns",
        })
        root.create_array("cell_id", data=np.column_stack([prefixes, np.ones(n, np.uint32)]).astype(np.uint32))
        root.create_array("cell_summary", data=summary.astype(np.float64), attributes={"column_names": columns})
        masks = root.create_group("masks")
        for key, img in (("0", nuclei), ("1", cells_mask)):
            chunks = (min(4096, img.shape[0]), min(4096, img.shape[1]))
            arr = masks.create_array(key, shape=img.shape, dtype=img.dtype, chunks=chunks)
            for r in range(0, img.shape[0], chunks[0]):  # a band at a time: bounded memory
                arr[r:r + chunks[0]] = img[r:r + chunks[0]]
        masks.create_array("homogeneous_transform", data=np.diag([1 / PIXEL_SIZE, 1 / PIXEL_SIZE, 1, 1]))
        sets = root.create_group("polygon_sets")
        for key in ("0", "1"):
            sets.create_group(key).create_array("cell_index", data=np.arange(n, dtype=np.uint32))
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for f in sorted(Path(tmp).rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(tmp).as_posix())


def write_xenium(out_dir: Path, slide: SimulatedSlide, counts: sparse.csr_matrix,
                 progress: bool = True) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Write the bundle into ``out_dir`` (created) and the H&E + alignment beside its files.

    Returns the paths the sample sheet needs (relative to ``out_dir.parent``) and per-cell
    truth columns (none: the truth ``cell_id`` is the Xenium cell id).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    genes = slide.expression.genes
    cells = slide.cells
    n = len(cells)
    ids = cells["cell_id"].to_numpy().astype(str)
    rng = slide.rng("xenium")

    nuclei, cells_mask = _label_masks(slide, scratch=out_dir)
    nucleus_polys = [slide.bank.polygon(int(s), 24) + [x, y]
                     for x, y, s in zip(cells["x_um"], cells["y_um"], cells["shape"])]
    nucleus_polys = [np.vstack([p, p[:1]]) for p in nucleus_polys]
    cell_polys = _cell_polygons(slide, cells_mask)
    area_px = PIXEL_SIZE**2
    cell_area = _label_counts(cells_mask, n) * area_px
    nucleus_area = _label_counts(nuclei, n) * area_px

    # Negative control probes: rare spurious counts, filtered out by gex_only readers.
    neg = sparse.csr_matrix(rng.poisson(0.01, (n, N_NEG_PROBES)).astype(np.int32))
    neg_names = [f"NegControlProbe_{i:05d}" for i in range(1, N_NEG_PROBES + 1)]
    write_feature_barcode_h5(
        out_dir / "cell_feature_matrix.h5", sparse.hstack([counts, neg]).tocsr(), list(ids),
        genes + neg_names, ids=feature_ids(genes) + neg_names,
        feature_types=[GENE_EXPRESSION] * len(genes) + ["Negative Control Probe"] * N_NEG_PROBES,
        library_id=slide.sample, chemistry="Xenium", software_version=XOA_VERSION)

    n_transcripts, nuclear_counts = _write_transcripts(out_dir / "transcripts.parquet", slide, counts,
                                                       genes, nuclei, cells_mask)

    tx_counts = np.asarray(counts.sum(axis=1)).ravel().astype(np.int64)
    neg_counts = np.asarray(neg.sum(axis=1)).ravel().astype(np.int64)
    pq.write_table(pa.table({
        "cell_id": ids,
        "x_centroid": cells["x_um"].to_numpy(),
        "y_centroid": cells["y_um"].to_numpy(),
        "transcript_counts": tx_counts,
        "control_probe_counts": neg_counts,
        "genomic_control_counts": np.zeros(n, np.int64),
        "control_codeword_counts": np.zeros(n, np.int64),
        "unassigned_codeword_counts": np.zeros(n, np.int64),
        "deprecated_codeword_counts": np.zeros(n, np.int64),
        "total_counts": tx_counts + neg_counts,
        "cell_area": cell_area,
        "nucleus_area": nucleus_area,
        "nucleus_count": np.ones(n, np.uint32),
        "segmentation_method": np.full(n, "Segmented by nucleus expansion of 5.0µm"),
    }), out_dir / "cells.parquet", compression="zstd")
    pq.write_table(_boundaries_table(ids, cell_polys), out_dir / "cell_boundaries.parquet", compression="zstd")
    pq.write_table(_boundaries_table(ids, nucleus_polys), out_dir / "nucleus_boundaries.parquet",
                   compression="zstd")

    prefixes = xenium_cell_id_prefixes(ids)
    summary = np.column_stack([
        cells["x_um"], cells["y_um"], cell_area, cells["x_um"], cells["y_um"], nucleus_area,
        np.zeros(n), np.ones(n)])
    _write_cells_zarr(out_dir / "cells.zarr.zip", slide, prefixes, summary, nuclei, cells_mask)

    (out_dir / "morphology_focus").mkdir(exist_ok=True)
    write_pyramid(out_dir / "morphology_focus" / "morphology_focus_0000.ome.tif",
                  _DapiTiles(slide, nuclei), PIXEL_SIZE, layout="ome", compression="zlib",
                  channel_names=["DAPI"], progress=False)

    experiment = {
        "major_version": 5, "minor_version": 0, "patch_version": 0,
        "run_name": f"pastflow-{slide.sample}", "run_start_time": "2026-01-01T00:00:00Z",
        "region_name": slide.sample, "preservation_method": "FFPE",
        "num_cells": n, "transcripts_per_cell": int(np.median(tx_counts)),
        "transcripts_per_100um": float(tx_counts.sum() / (slide.width_um * slide.height_um) * 1e4),
        "cassette_name": "SIMULATED", "slide_id": "SIMULATED", "panel_design_id": "pastflow-sim",
        "panel_name": "pastflow simulated panel", "panel_organism": "Human",
        "panel_num_targets_predesigned": len(genes), "panel_num_targets_custom": 0,
        "pixel_size": PIXEL_SIZE, "instrument_sn": "SIMULATED", "instrument_sw_version": "2.0.0.10",
        "analysis_sw_version": XOA_VERSION, "z_step_size": 3.0,
        "images": {"morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"},
        "xenium_explorer_files": {"transcripts_zarr_filepath": "", "cells_zarr_filepath": "cells.zarr.zip"},
    }
    (out_dir / "experiment.xenium").write_text(json.dumps(experiment, indent=2))

    # Post-Xenium H&E, its pyramid in SubIFDs as 10x ships it, and the alignment.
    write_pyramid(out_dir / "he.ome.tif", slide.renderer(), slide.geometry.mpp, layout="ome",
                  progress=progress)
    np.savetxt(out_dir / "he_imagealignment.csv", alignment_matrix(slide), delimiter=",", fmt="%.10g")
    log.info("wrote Xenium bundle %s: %d cells, %d transcripts", out_dir, n, n_transcripts)
    rel = out_dir.name
    return {"data": rel, "image": f"{rel}/he.ome.tif", "alignment": f"{rel}/he_imagealignment.csv"}, {}

