"""Visium HD (Space Ranger 3.0) ``outs/`` folder, with the full-resolution H&E beside it.

Square bins of 8 um and 16 um (``binned_outputs/square_008um``, ``square_016um``) on a grid
laid in the tissue frame: bin ``(array_row i, array_col j)`` of size ``b`` covers
``[j b, (j + 1) b) x [i b, (i + 1) b)`` microns. Counts come from each cell's transcripts,
scattered over the cell (~3.5 um spread) and binned, so a cell spreads over neighbouring bins.

Per bin size: ``filtered_feature_bc_matrix.h5`` (in-tissue bins), ``spatial/tissue_positions.parquet``
(every bin; float full-resolution pixels), ``spatial/scalefactors_json.json`` (with
``bin_size_um``, ``microns_per_pixel``). Shared: ``spatial/`` tissue images and scale factors,
and ``feature_slice.h5`` whose ``metadata_json`` attribute carries the layout and the
spot-to-microscope transforms (``spatialdata_io.visium_hd`` needs its ``file_format``).
2 um bins are not written (the reader does not need them; they would dwarf everything else).
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

BIN_SIZES_UM = (8, 16)
SPACERANGER_VERSION = "spaceranger-3.0.0"
TRANSCRIPT_SPREAD_UM = 3.5


def bin_barcode(size_um: int, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``s_008um_00012_00034-1`` style barcodes."""
    return np.array([f"s_{size_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(row, col)])


def _transcript_positions(slide: SimulatedSlide, counts: sparse.csr_matrix):
    """Gene and tissue-frame position (microns) of every counted transcript."""
    rng = slide.rng("hd-transcripts")
    coo = counts.tocoo()
    cell = np.repeat(coo.row, coo.data)
    gene = np.repeat(coo.col, coo.data)
    x = slide.cells["x_um"].to_numpy()[cell] + rng.normal(0, TRANSCRIPT_SPREAD_UM, cell.size)
    y = slide.cells["y_um"].to_numpy()[cell] + rng.normal(0, TRANSCRIPT_SPREAD_UM, cell.size)
    return gene, x, y


def write_visium_hd(sample_dir: Path, slide: SimulatedSlide, counts: sparse.csr_matrix,
                    progress: bool = True) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Write ``sample_dir/outs/`` and ``sample_dir/he.tif``.

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
        n_rows = int(np.ceil(slide.height_um / size))
        n_cols = int(np.ceil(slide.width_um / size))
        rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
        cx, cy = (cols + 0.5) * size, (rows + 0.5) * size
        x_px, y_px = geom.to_px(cx, cy)
        in_tissue = (slide.fields.sample("tissue", cx, cy) > 0).astype(np.int32)
        barcodes = bin_barcode(size, rows, cols)
        bin_dir = outs / "binned_outputs" / f"square_{size:03d}um"
        (bin_dir / "spatial").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({
            "barcode": barcodes,
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
                                 barcodes[keep].tolist(), slide.expression.genes,
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

    # Slide-level scale factors refer to the 2 um grid, as Space Ranger writes them.
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": 2.0 / geom.mpp, "bin_size_um": 2.0, "microns_per_pixel": geom.mpp,
        "regist_target_img_scalef": images["tissue_hires_scalef"], **images}, indent=2))
    _write_feature_slice(outs / "feature_slice.h5", slide)

    # Truth: the 8 um bin of each cell centre.
    size = BIN_SIZES_UM[0]
    row = (slide.cells["y_um"].to_numpy() // size).astype(int)
    col = (slide.cells["x_um"].to_numpy() // size).astype(int)
    return {"data": "outs", "image": "he.tif", "alignment": ""}, {"bin_008um": bin_barcode(size, row, col)}


def _write_feature_slice(path: Path, slide: SimulatedSlide) -> None:
    """``feature_slice.h5`` metadata: the HD layout and spot (2 um) -> microscope transforms."""
    spot_to_um = np.array([[2.0, 0, 1.0], [0, 2.0, 1.0], [0, 0, 1]])  # 2 um spot col/row -> centre
    spot_to_px = slide.geometry.um_to_px @ spot_to_um
    n_rows = int(np.ceil(slide.height_um / 2))
    n_cols = int(np.ceil(slide.width_um / 2))
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
