"""H&E-only slides: the cells are the nuclei found on the slide; no expression (``X`` is ``n x 0``).

Any format :func:`pastflow.slide.open_slide` reads: vendor WSIs through OpenSlide (SVS, NDPI,
MRXS, ...), OME-TIFF and generic TIFF through tifffile, JPEG / PNG through Pillow. The
resolution comes from the file, or from ``mpp`` when the file has none (JPEG, PNG, many
TIFFs): the sample sheet's column ``mpp``, else the config key ``ingest.mpp``; with neither, the
slide is refused: nucleus sizes and patch sizes are in microns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from pastflow.contracts import MPP_TOLERANCE
from pastflow.errors import InputError
from pastflow.ingest.common import SampleParts
from pastflow.ingest.nuclei import TARGET_MPP, detect_nuclei
from pastflow.technologies import REGISTRY

log = logging.getLogger(__name__)

CELL_DIAMETER_UM = REGISTRY["he_only"].unit_diameter_um
# ``mpp_source`` of a resolution the caller gave; ingest_sample names where it came from.
GIVEN_MPP = "given"
NO_MPP_FIX = ("give it in the sample sheet column mpp (this slide) or the config key ingest.mpp "
              "(every slide that records none)")


def read_he_only(image: str | Path, mpp: float | None = None, *, target_mpp: float = TARGET_MPP,
                 progress: bool = True, max_area_mm2: float | None = None) -> SampleParts:
    """Detect the nuclei of the slide at ``image``; each is a cell (id ``nucleus_0000001``, ...).

    ``mpp``: microns per level-0 pixel when the file records none (``mpp_source``
    :data:`GIVEN_MPP`). ``max_area_mm2``: larger slides are refused before detection
    (config key ``ingest.max_detection_mm2``).

    Raises:
        InputError: unreadable or blank slide, no resolution, or no nucleus found.
    """
    from pastflow.slide import open_slide

    image = Path(image)
    with open_slide(image) as slide:
        if slide.mpp:
            if mpp and abs(mpp / slide.mpp - 1) > MPP_TOLERANCE:
                log.warning("%s: the given mpp %.4f (sheet column mpp or ingest.mpp) ignored, "
                            "the file says %.4f um/px", image, mpp, slide.mpp)
            mpp_value, mpp_source = slide.mpp, "image metadata"
        elif mpp:
            mpp_value, mpp_source = float(mpp), GIVEN_MPP
        else:
            raise InputError(image, f"the slide records no microns per pixel; {NO_MPP_FIX}")
        nuclei = detect_nuclei(slide, mpp_value, target_mpp=target_mpp, progress=progress,
                               max_area_mm2=max_area_mm2)
    if nuclei.empty:
        raise InputError(image, "no nuclei found on the slide (blank, out of focus, or not an H&E?)")
    xy = nuclei[["x_px", "y_px"]].to_numpy(np.float64)
    n = len(nuclei)
    return SampleParts(
        counts=sparse.csr_matrix((n, 0), dtype=np.float32), var=pd.DataFrame(index=pd.Index([], dtype=str)),
        cell_ids=np.array([f"nucleus_{i + 1:07d}" for i in range(n)]), xy_vendor=xy,
        vendor_to_he=np.eye(3), vendor_space="he_pixels", slide_path=image, mpp=mpp_value,
        unit_diameter_um=CELL_DIAMETER_UM,
        radius_um=np.sqrt(nuclei["area_um2"].to_numpy() / np.pi),
        obs=pd.DataFrame({"nucleus_area_um2": nuclei["area_um2"].to_numpy()}),
        uns={"mpp_source": mpp_source, "cells_from": "nucleus detection (pastflow.ingest.nuclei)",
             "detection_target_mpp": target_mpp})
