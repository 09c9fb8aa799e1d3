"""Visium (Space Ranger >= 2.0) ``outs/`` folder, with the full-resolution H&E beside it.

Spots of 55 um diameter on a hexagonal lattice with 100 um centre-to-centre spacing (rows
86.6 um apart, odd rows shifted by 50 um, ``array_col`` even on even rows as on the real
slide). A spot's counts are the sum of the counts of the cells whose centres lie under it.
The lattice is laid in the tissue frame, so on the H&E it is rotated like the tissue.

Files: ``filtered_feature_bc_matrix.h5`` (in-tissue spots), ``spatial/tissue_positions.csv``
(every spot on the slide, Space Ranger 2.0 header, integer full-resolution pixels),
``spatial/scalefactors_json.json``, ``spatial/tissue_hires_image.png``,
``spatial/tissue_lowres_image.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree

from pastflow.simulate.slide import SimulatedSlide
from pastflow.simulate.spaceranger import aggregate, write_tissue_images
from pastflow.simulate.tenx import spot_barcodes, write_feature_barcode_h5
from pastflow.simulate.tiff import write_pyramid

log = logging.getLogger(__name__)

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
FIDUCIAL_DIAMETER_UM = 89.5  # as Space Ranger reports, relative to the 55 um spot
SPACERANGER_VERSION = "spaceranger-2.1.0"


def spot_lattice(width_um: float, height_um: float) -> pd.DataFrame:
    """Spot centres (tissue-frame microns) inside ``[0, width] x [0, height]``.

    Columns ``array_row, array_col, x_um, y_um``; the lattice starts half a pitch in.
    """
    row_step = SPOT_PITCH_UM * np.sqrt(3) / 2
    rows = []
    for r in range(int((height_um - SPOT_PITCH_UM / 2) // row_step) + 1):
        y = SPOT_PITCH_UM / 2 + r * row_step
        for c in range(r % 2, 2 * int(width_um // (SPOT_PITCH_UM / 2)) + 2, 2):
            x = SPOT_PITCH_UM / 2 + c * SPOT_PITCH_UM / 2
            if x <= width_um - SPOT_PITCH_UM / 4 and y <= height_um:
                rows.append((r, c, x, y))
    return pd.DataFrame(rows, columns=["array_row", "array_col", "x_um", "y_um"])


def cells_under_spots(slide: SimulatedSlide, spots: pd.DataFrame) -> np.ndarray:
    """Index of the spot covering each cell centre, -1 if none (spots never overlap)."""
    tree = cKDTree(spots[["x_um", "y_um"]].to_numpy())
    dist, idx = tree.query(slide.cells[["x_um", "y_um"]].to_numpy())
    return np.where(dist <= SPOT_DIAMETER_UM / 2, idx, -1)


def write_visium(sample_dir: Path, slide: SimulatedSlide, counts: sparse.csr_matrix,
                 progress: bool = True) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Write ``sample_dir/outs/`` and ``sample_dir/he.tif``.

    Returns the sample-sheet paths (relative to ``sample_dir``) and per-cell truth columns
    (``spot``: barcode of the spot over the cell, "" if none).
    """
    outs = sample_dir / "outs"
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    he = sample_dir / "he.tif"
    write_pyramid(he, slide.renderer(), slide.geometry.mpp, layout="generic",
                  description=f"pastflow simulated H&E {slide.sample}", progress=progress)

    spots = spot_lattice(slide.width_um, slide.height_um)
    x_px, y_px = slide.geometry.to_px(spots["x_um"].to_numpy(), spots["y_um"].to_numpy())
    spots["barcode"] = spot_barcodes([f"{slide.sample}:{r}:{c}" for r, c in zip(spots.array_row, spots.array_col)])
    spots["in_tissue"] = (slide.fields.sample("tissue", spots["x_um"], spots["y_um"]) > 0).astype(int)
    spots["pxl_row_in_fullres"] = np.rint(y_px).astype(int)
    spots["pxl_col_in_fullres"] = np.rint(x_px).astype(int)
    spots[["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]].to_csv(
        spatial / "tissue_positions.csv", index=False)

    spot_of_cell = cells_under_spots(slide, spots)
    spot_counts = aggregate(counts, spot_of_cell, len(spots))
    keep = np.flatnonzero(spots["in_tissue"].to_numpy() == 1)
    write_feature_barcode_h5(outs / "filtered_feature_bc_matrix.h5", spot_counts[keep],
                             spots["barcode"].iloc[keep].tolist(), slide.expression.genes,
                             library_id=slide.sample, chemistry="Spatial 3' v1",
                             software_version=SPACERANGER_VERSION)

    px_per_um = 1.0 / slide.geometry.mpp
    scalefactors = {
        "spot_diameter_fullres": SPOT_DIAMETER_UM * px_per_um,
        "fiducial_diameter_fullres": FIDUCIAL_DIAMETER_UM * px_per_um,
        **write_tissue_images(he, spatial),
    }
    scalefactors["regist_target_img_scalef"] = scalefactors["tissue_hires_scalef"]
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
    log.info("wrote Visium outs %s: %d spots (%d in tissue), %d cells under spots", outs, len(spots),
             len(keep), int((spot_of_cell >= 0).sum()))
    spot_barcode = np.where(spot_of_cell >= 0, spots["barcode"].to_numpy()[np.maximum(spot_of_cell, 0)], "")
    return {"data": "outs", "image": "he.tif", "alignment": ""}, {"spot": spot_barcode}
