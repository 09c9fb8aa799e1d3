"""Visium HD (Space Ranger 3.0) ``outs/`` folder, with the full-resolution H&E beside it.

Square bins of 2, 8 and 16 um (``binned_outputs/square_002um``, ``square_008um``,
``square_016um``) on one grid laid in the tissue frame: bin ``(array_row i, array_col j)`` of
size ``b`` covers ``[j b, (j + 1) b) x [i b, (i + 1) b)`` microns, so an 8 um bin is 4 x 4
2 um bins. Every bin size bins the same transcripts: each cell's are spread over its body
(the cytoplasm ellipse the H&E shows, :meth:`ShapeBank.body_radius_at`) and diffuse a little
(:data:`DIFFUSION_UM`), so a cell spreads over neighbouring bins.

Per bin size: ``filtered_feature_bc_matrix.h5`` (in-tissue bins), ``spatial/tissue_positions.parquet``
(every bin; float full-resolution pixels), ``spatial/scalefactors_json.json`` (with
``bin_size_um``, ``microns_per_pixel``). Shared: ``spatial/`` tissue images and scale factors,
and ``feature_slice.h5`` whose ``metadata_json`` attribute carries the layout and the
spot-to-microscope transforms (``spatialdata_io.visium_hd`` needs its ``file_format``).

Truth, beside the sample's other truth files (not in ``outs/``): :data:`TRUTH_BINS`, one row
per 2 um bin whose centre lies in a cell body (``array_row, array_col, cell_id``); where two
bodies overlap the bin goes to the cell it is deeper inside (smaller radius fraction).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.simulate.slide import SimulatedSlide
from pastflow.simulate.spaceranger import write_tissue_images
from pastflow.simulate.tenx import write_feature_barcode_h5
from pastflow.simulate.tiff import write_pyramid

log = logging.getLogger(__name__)

BIN_SIZES_UM = (2, 8, 16)
SPACERANGER_VERSION = "spaceranger-3.0.0"
DIFFUSION_UM = 1.0  # lateral drift of a transcript before capture (sd per axis)
TRUTH_BINS = "bins_002um.parquet"
CELL_CHUNK = 20_000  # cells per step of the truth map (bounds its memory)


def bin_barcode_bytes(size_um: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``s_008um_00012_00034-1`` style barcodes as a fixed-width bytes array (``S21``),
    built without a Python string per bin (a 2 um grid has millions)."""
    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    powers = 10 ** np.arange(4, -1, -1)
    chars = np.empty((row.size, 21), np.uint8)
    chars[:, :8] = np.frombuffer(f"s_{size_um:03d}um_".encode(), np.uint8)
    chars[:, 8:13] = row[:, None] // powers % 10 + ord("0")
    chars[:, 13] = ord("_")
    chars[:, 14:19] = col[:, None] // powers % 10 + ord("0")
    chars[:, 19:] = np.frombuffer(b"-1", np.uint8)
    return chars.view("S21").ravel()


def bin_barcode(size_um: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``s_008um_00012_00034-1`` style barcodes (strings)."""
    return bin_barcode_bytes(size_um, row, col).astype(str)


def _transcript_positions(slide: SimulatedSlide, counts: sparse.csr_matrix):
    """Gene and tissue-frame position (microns) of every counted transcript.

    Spread over the cell body (radius ``sqrt(u)`` x the body radius in a uniform direction),
    then diffused by :data:`DIFFUSION_UM`.
    """
    rng = slide.rng("hd-transcripts")
    coo = counts.tocoo()
    cell = np.repeat(coo.row, coo.data)
    gene = np.repeat(coo.col, coo.data)
    angle = rng.uniform(0, 2 * np.pi, cell.size)
    radius = np.sqrt(rng.random(cell.size)) * slide.bank.body_radius_at(
        slide.cells["shape"].to_numpy()[cell], angle)
    x = (slide.cells["x_um"].to_numpy()[cell] + radius * np.cos(angle)
         + rng.normal(0, DIFFUSION_UM, cell.size))
    y = (slide.cells["y_um"].to_numpy()[cell] + radius * np.sin(angle)
         + rng.normal(0, DIFFUSION_UM, cell.size))
    return gene, x, y


def grid_shape(slide: SimulatedSlide, bin_um: int) -> tuple[int, int]:
    """``(n_rows, n_cols)`` of the bin grid covering the tissue frame."""
    return int(np.ceil(slide.height_um / bin_um)), int(np.ceil(slide.width_um / bin_um))


def cell_of_bins(slide: SimulatedSlide, bin_um: int) -> np.ndarray:
    """``int32 (n_rows, n_cols)`` (:func:`grid_shape`): the row of ``slide.cells`` whose body
    holds each bin's centre, -1 for none; where bodies overlap, the cell whose body the centre
    is deepest inside (smallest fraction of the body radius in that direction)."""
    n_rows, n_cols = grid_shape(slide, bin_um)
    shape = slide.cells["shape"].to_numpy()
    x_um, y_um = slide.cells["x_um"].to_numpy(), slide.cells["y_um"].to_numpy()
    reach = max(float(slide.bank.body_axes.max()), float(slide.bank.bounding_radius.max()))
    w = int(np.ceil(reach / bin_um)) + 1
    dj, di = (a.ravel() for a in np.mgrid[-w:w + 1, -w:w + 1])
    owner = np.full(n_rows * n_cols, -1, np.int32)
    depth = np.full(n_rows * n_cols, np.inf, np.float32)  # radius fraction of the owner
    for start in range(0, len(shape), CELL_CHUNK):
        cells = np.arange(start, min(start + CELL_CHUNK, len(shape)))
        rows = (y_um[cells] // bin_um).astype(np.int64)[:, None] + di
        cols = (x_um[cells] // bin_um).astype(np.int64)[:, None] + dj
        dx = (cols + 0.5) * bin_um - x_um[cells, None]
        dy = (rows + 0.5) * bin_um - y_um[cells, None]
        angle = np.arctan2(dy, dx)
        fraction = np.hypot(dx, dy) / slide.bank.body_radius_at(shape[cells, None], angle)
        inside = (fraction <= 1) & (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
        flat, fraction = (rows * n_cols + cols)[inside], fraction[inside].astype(np.float32)
        cell = np.broadcast_to(cells[:, None], inside.shape)[inside]
        # Deepest first, then the first occurrence of each bin wins (in this chunk, then overall).
        order = np.argsort(fraction, kind="stable")
        flat, fraction, cell = flat[order], fraction[order], cell[order]
        first = np.unique(flat, return_index=True)[1]
        flat, fraction, cell = flat[first], fraction[first], cell[first]
        better = fraction < depth[flat]
        owner[flat[better]], depth[flat[better]] = cell[better], fraction[better]
    return owner.reshape(n_rows, n_cols)


def write_visium_hd(sample_dir: Path, slide: SimulatedSlide, counts: sparse.csr_matrix,
                    progress: bool = True) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Write ``sample_dir/outs/``, ``sample_dir/he.tif`` and ``sample_dir/truth/`` :data:`TRUTH_BINS`.

    Returns the sample-sheet paths (relative to ``sample_dir``) and per-cell truth columns
    (``bin_008um``: barcode of the 8 um bin holding the cell centre).
    """
    outs = sample_dir / "outs"
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    he = sample_dir / "he.tif"
    geom = slide.geometry
    write_pyramid(he, slide.renderer(), geom.mpp, layout="generic",
                  description=f"pastflow simulated H&E {slide.sample}", progress=progress)
    images = write_tissue_images(he, outs / "spatial")
    gene, tx, ty = _transcript_positions(slide, counts)
    n_genes = counts.shape[1]

    for size in BIN_SIZES_UM:
        n_rows, n_cols = grid_shape(slide, size)
        rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
        cx, cy = (cols + 0.5) * size, (rows + 0.5) * size
        x_px, y_px = geom.to_px(cx, cy)
        in_tissue = (slide.fields.sample("tissue", cx, cy) > 0).astype(np.int32)
        barcodes = bin_barcode_bytes(size, rows, cols)
        bin_dir = outs / "binned_outputs" / f"square_{size:03d}um"
        (bin_dir / "spatial").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({
            "barcode": barcodes.astype(str),
            "in_tissue": in_tissue,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": y_px,
            "pxl_col_in_fullres": x_px,
        }).to_parquet(bin_dir / "spatial" / "tissue_positions.parquet", index=False)

        ok = (tx >= 0) & (tx < n_cols * size) & (ty >= 0) & (ty < n_rows * size)
        bin_of = (ty[ok] // size).astype(np.int64) * n_cols + (tx[ok] // size).astype(np.int64)
        binned = sparse.csr_matrix((np.ones(bin_of.size, np.int32), (bin_of, gene[ok])),
                                   shape=(n_rows * n_cols, n_genes))
        binned.sum_duplicates()
        keep = np.flatnonzero(in_tissue == 1)
        write_feature_barcode_h5(bin_dir / "filtered_feature_bc_matrix.h5", binned[keep],
                                 barcodes[keep], slide.expression.genes,
                                 library_id=slide.sample, chemistry="Visium HD v1",
                                 software_version=SPACERANGER_VERSION)
        factors = {
            "spot_diameter_fullres": size / geom.mpp,
            "bin_size_um": float(size),
            "microns_per_pixel": geom.mpp,
            "regist_target_img_scalef": images["tissue_hires_scalef"],
            **images,
        }
        (bin_dir / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors, indent=2))
        log.info("Visium HD %d um: %d bins, %d in tissue", size, len(barcodes), len(keep))

    _write_truth_bins(sample_dir / "truth" / TRUTH_BINS, slide, BIN_SIZES_UM[0])

    # Slide-level scale factors refer to the 2 um grid, as Space Ranger writes them.
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": 2.0 / geom.mpp, "bin_size_um": 2.0, "microns_per_pixel": geom.mpp,
        "regist_target_img_scalef": images["tissue_hires_scalef"], **images}, indent=2))
    _write_feature_slice(outs / "feature_slice.h5", slide)

    # Truth: the 8 um bin of each cell centre.
    size = 8
    row = (slide.cells["y_um"].to_numpy() // size).astype(int)
    col = (slide.cells["x_um"].to_numpy() // size).astype(int)
    return {"data": "outs", "image": "he.tif", "alignment": ""}, {"bin_008um": bin_barcode(size, row, col)}


def _write_truth_bins(path: Path, slide: SimulatedSlide, bin_um: int) -> None:
    """:data:`TRUTH_BINS`: ``array_row, array_col, cell_id`` of every bin inside a cell body."""
    owner = cell_of_bins(slide, bin_um)
    rows, cols = np.nonzero(owner >= 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"array_row": rows.astype(np.int32), "array_col": cols.astype(np.int32),
                  "cell_id": pd.Categorical.from_codes(owner[rows, cols],
                                                       slide.cells["cell_id"].astype(str))}
                 ).to_parquet(path, index=False)


def _write_feature_slice(path: Path, slide: SimulatedSlide) -> None:
    """``feature_slice.h5`` metadata: the HD layout and spot (2 um) -> microscope transforms."""
    spot_to_um = np.array([[2.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1]])  # 2 um spot col/row -> centre
    spot_to_px = slide.geometry.um_to_px @ spot_to_um
    n_rows, n_cols = grid_shape(slide, 2)
    layout = {"file_format": "1.0", "num_rows": n_rows, "num_cols": n_cols, "spot_pitch": 2.0,
              "transform": spot_to_um.ravel().tolist()}
    metadata = {
        "hd_layout_json": json.dumps(layout),
        "transform_matrices": {
            "spot_colrow_to_microscope_colrow": spot_to_px.ravel().tolist(),
            "microscope_colrow_to_spot_colrow": np.linalg.inv(spot_to_px).ravel().tolist(),
        },
        "software_version": SPACERANGER_VERSION,
        "sample_id": slide.sample,
    }
    with h5py.File(path, "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)
