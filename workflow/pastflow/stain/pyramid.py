"""Virtual stains written as tiled pyramidal TIFFs that OpenSlide and QuPath open.

The layout is the simulator's ``generic`` pyramid (:func:`pastflow.simulate.tiff.write_pyramid`):
JPEG tiles, reduced levels as top-level IFDs with ``NewSubfileType = 1`` and resolution tags.
OpenSlide 4 opens it as ``generic-tiff`` with every level and ``openslide.mpp-x``; the OME
layout (levels in SubIFDs) would open in OpenSlide at level 0 only (DESIGN.md, facts checked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from pastflow.atomic import atomic_path
from pastflow.simulate.tiff import TileSource, write_pyramid

# Halve until the longer side is below this, so even a ~500 px slide gets a reduced level.
MIN_LEVEL_PX = 256


def write_stain_pyramid(path: str | Path, source: TileSource, mpp: float, *,
                        description: str | None = None, quality: int = 90,
                        progress: bool = False) -> list[tuple[int, int]]:
    """Write ``source`` (tiles of ``uint8 (t, t, 3)``) atomically as a pyramid; level shapes."""
    with atomic_path(path) as tmp:
        return write_pyramid(tmp, source, mpp, layout="generic", quality=quality,
                             min_size=MIN_LEVEL_PX, description=description, progress=progress)


def read_thumbnail_level(path: str | Path, min_side: int = 400) -> np.ndarray:
    """The smallest pyramid level whose longer side is at least ``min_side`` (else level 0)."""
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        chosen = levels[0]
        for level in levels:
            if max(level.shape[:2]) >= min_side:
                chosen = level
        return chosen.asarray()
