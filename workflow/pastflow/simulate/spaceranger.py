"""Pieces shared by the Space Ranger writers (Visium and Visium HD): the downsampled tissue
images of ``outs/spatial/`` and the counts of cells aggregated into spots or bins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import sparse

HIRES_PX = 2000  # longest side of tissue_hires_image.png
LOWRES_PX = 600  # of tissue_lowres_image.png


def write_tissue_images(slide_path: Path, spatial_dir: Path) -> dict[str, float]:
    """Write ``tissue_hires_image.png`` and ``tissue_lowres_image.png`` from a pyramidal TIFF.

    Returns ``{"tissue_hires_scalef": ..., "tissue_lowres_scalef": ...}``: full-resolution
    pixel coordinates times a scale factor give that image's pixels (never above 1).
    """
    spatial_dir.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffFile(slide_path) as tif:
        levels = tif.series[0].levels
        full_h, full_w = levels[0].shape[:2]
        scalefs = {}
        for name, target in (("hires", HIRES_PX), ("lowres", LOWRES_PX)):
            scalef = min(1.0, target / max(full_h, full_w))
            size = (max(1, round(full_w * scalef)), max(1, round(full_h * scalef)))
            # Smallest pyramid level still at least as large as the target: bounded memory.
            level = next(lv for lv in reversed(levels) if max(lv.shape[:2]) >= max(size))
            img = Image.fromarray(level.asarray()).resize(size, Image.Resampling.LANCZOS)
            img.save(spatial_dir / f"tissue_{name}_image.png")
            scalefs[f"tissue_{name}_scalef"] = scalef
    return scalefs


def aggregate(counts: sparse.csr_matrix, unit_of: np.ndarray, n_units: int) -> sparse.csr_matrix:
    """Sum rows of ``counts`` into units: ``unit_of[r]`` is row r's unit, or -1 for none."""
    rows = np.flatnonzero(unit_of >= 0)
    member = sparse.csr_matrix((np.ones(rows.size, np.int32), (unit_of[rows], rows)),
                               shape=(n_units, counts.shape[0]))
    return (member @ counts).tocsr()
