"""Tell tissue from empty glass: Otsu on colour saturation of a low-resolution thumbnail.

H&E-stained tissue is pink to purple (saturated); glass, even when tinted or dusty, is near
grey. A cell (or spot) is tissue-free when its centre falls outside the mask.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Microns per thumbnail pixel: finer than a cell, coarse enough to be cheap on a whole slide.
THUMBNAIL_UM = 8.0
# Otsu splits *some* two classes; on a slide that is all tissue (or all glass) those are both
# tissue (or both glass). Clamping the threshold keeps the answer right in those cases:
# glass sits below ~0.05 saturation, H&E stain above ~0.15.
MIN_THRESHOLD = 0.05
MAX_THRESHOLD = 0.15
# Holes up to this area (um^2) inside tissue (lumens, fat, tears) still count as tissue;
# specks up to this area on glass (dust, debris, a stray cell) do not.
MAX_HOLE_UM2 = 100.0 * 100.0
MAX_SPECK_UM2 = 50.0 * 50.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of ``uint8 (h, w, 3)``: ``float32 (h, w)``, 0..1."""
    # Channel by channel: numpy's reductions over a last axis of 3 are 10x slower.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(red, green), blue)
    spread = (top - np.minimum(np.minimum(red, green), blue)).astype(np.float32)
    return spread / np.maximum(top, 1).astype(np.float32)  # 0 where top is 0


def tissue_mask(thumbnail: np.ndarray, thumbnail_mpp: float) -> np.ndarray:
    """Tissue mask of ``uint8 (h, w, 3)`` RGB at ``thumbnail_mpp`` um/px -> ``bool (h, w)``."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects

    sat = saturation(thumbnail)
    threshold = threshold_otsu(sat) if sat.size and np.ptp(sat) > 0 else MAX_THRESHOLD
    mask = sat > float(np.clip(threshold, MIN_THRESHOLD, MAX_THRESHOLD))
    # Close the gaps between nuclei and stroma fibres, then fill small holes.
    mask = closing(mask, disk(1))
    mask = remove_small_objects(mask, max_size=int(MAX_SPECK_UM2 / thumbnail_mpp**2))
    return remove_small_holes(mask, max_size=int(MAX_HOLE_UM2 / thumbnail_mpp**2))


def flag_in_tissue(mask: np.ndarray, xy: np.ndarray, downsample: float) -> np.ndarray:
    """Is each point on tissue? -> ``bool (n,)``.

    Args:
        mask: ``bool (h, w)`` from :func:`tissue_mask`.
        xy: ``(n, 2)`` ``[x, y]`` in pixels of the image the mask was made from (pixel centres
            at integer coordinates); points past its edge take the nearest mask pixel.
        downsample: image pixels per mask pixel.
    """
    xy = np.asarray(xy, np.float64)
    col = np.clip(np.floor((xy[:, 0] + 0.5) / downsample), 0, mask.shape[1] - 1).astype(np.int64)
    row = np.clip(np.floor((xy[:, 1] + 0.5) / downsample), 0, mask.shape[0] - 1).astype(np.int64)
    return mask[row, col]


class ThumbnailBuilder:
    """Build a thumbnail from full-width bands streamed top to bottom, in bounded memory.

    Keeps one row per block of ``factor`` rows (its middle row) and box-averages along it:
    ``1/factor`` of the pixels are touched, enough for a tissue mask.
    """

    def __init__(self, width: int, height: int, factor: int):
        self.factor = f = max(1, int(factor))
        n_rows = -(-height // f)
        self.shape = (n_rows, -(-width // f), 3)
        self._sample_rows = np.minimum(np.arange(n_rows) * f + f // 2, height - 1)
        self._rows: list[np.ndarray] = []

    def add(self, y0: int, band: np.ndarray, channels_first: bool = False) -> None:
        """Take the sampled rows of ``band``, ``uint8 (rows, width, 3)`` (or ``(3, rows, width)``
        if ``channels_first``) starting at image row ``y0``."""
        n_rows = band.shape[1 if channels_first else 0]
        wanted = self._sample_rows[(self._sample_rows >= y0) & (self._sample_rows < y0 + n_rows)]
        if not len(wanted):
            return
        box = (self.factor, 1)
        if channels_first:  # reduce each channel plane: no transpose of full-width rows
            planes = [
                np.asarray(Image.fromarray(band[c, wanted - y0]).reduce(box)) for c in range(3)
            ]
            self._rows.append(np.stack(planes, axis=-1))
        else:
            rows = np.ascontiguousarray(band[wanted - y0])
            self._rows.append(np.asarray(Image.fromarray(rows).reduce(box)))

    def result(self) -> np.ndarray:
        """The thumbnail, ``uint8 (ceil(height / factor), ceil(width / factor), 3)``."""
        rows = (
            np.concatenate(self._rows) if self._rows else np.zeros((0,) + self.shape[1:], np.uint8)
        )
        if rows.shape != self.shape:
            raise ValueError(f"thumbnail got {rows.shape[0]} of {self.shape[0]} rows")
        return rows
