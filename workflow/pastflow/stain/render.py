"""The virtual IHC image: the H&E's hematoxylin counterstain plus a DAB layer per cell.

Per tile: colour deconvolution of the H&E (:mod:`pastflow.stain.deconvolve`) keeps only the
hematoxylin; each cell adds a DAB optical density set by its level (:data:`LEVEL_OD`), drawn
as a blob round its centre shaped by the marker's compartment; the two are recombined by
Beer-Lambert (``I = 10^(-OD @ stain vectors)``). Overlapping cells take the larger OD (a
pixel cannot be stained twice as dark because two cells touch).

Tiles are rendered on demand, so a slide is never held in memory as floats: the result is a
:class:`~pastflow.simulate.tiff.TileSource` that the pyramid writer pulls from.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pastflow.stain.deconvolve import DAB_THRESHOLDS, combine_stains, separate_stains

# DAB OD (base 10) of a cell at level 0, 1+, 2+, 3+: the midpoints of QuPath's DAB classes
# (0.12 / 0.24 / 0.6), 3+ at 1.5 x its threshold, so the pixel H-score of the virtual stain
# (deconvolve.dab_hscore) reads back each cell's level.
LEVEL_OD = (0.0, (DAB_THRESHOLDS[0] + DAB_THRESHOLDS[1]) / 2,
            (DAB_THRESHOLDS[1] + DAB_THRESHOLDS[2]) / 2, 1.5 * DAB_THRESHOLDS[2])
# Blob sizes as fractions of the unit diameter (a cell of 10 um: nucleus radius 3.5 um, membrane
# ring at 5 um, 1 um thick); a Visium spot or HD bin scales with its own diameter.
NUCLEUS_FRACTION = 0.35
CELL_FRACTION = 0.5
MEMBRANE_FRACTION = 0.1
# A membrane stain also tints the cell's interior (the membrane above and below the focal
# plane, as in a CD3 or HER2 slide); without it, a 1-um ring vanishes in any thumbnail.
MEMBRANE_FILL = 0.4


def blob_profile(distance: np.ndarray, compartment: str, radius_px: float) -> np.ndarray:
    """Stain weight 0..1 at ``distance`` (pixels) from a cell centre.

    ``radius_px``: the unit (cell) radius in pixels. Edges are anti-aliased over one pixel.
    """
    if compartment == "nuclear":
        return np.clip(NUCLEUS_FRACTION / CELL_FRACTION * radius_px + 0.5 - distance, 0, 1)
    if compartment == "cytoplasmic":
        return np.clip(radius_px + 0.5 - distance, 0, 1)
    if compartment == "membrane":
        half = max(MEMBRANE_FRACTION / CELL_FRACTION * radius_px, 1.0) / 2
        ring = np.clip(half + 0.5 - np.abs(distance - radius_px), 0, 1)
        return np.maximum(ring, MEMBRANE_FILL * np.clip(radius_px + 0.5 - distance, 0, 1))
    raise ValueError(f"unknown compartment {compartment!r}")


class VirtualStainTiles:
    """Virtual IHC tiles of an H&E ``(3, H, W)`` (or ``(H, W, 3)``) uint8 image.

    ``centers``: ``(n, 2)`` ``[x, y]`` cell centres in image pixels; ``levels``: ``(n,)``
    ints 0..3; ``radius_px``: the unit radius in pixels; ``crop``: ``(x0, y0, width, height)``
    of the image to render (default all of it), e.g. to drop a white margin. Satisfies the
    ``TileSource`` protocol of :func:`pastflow.simulate.tiff.write_pyramid`.
    """

    def __init__(self, image: np.ndarray, centers: np.ndarray, levels: np.ndarray,
                 compartment: str, radius_px: float, tile: int = 256,
                 crop: tuple[int, int, int, int] | None = None,
                 level_od: tuple[float, ...] = LEVEL_OD):
        self.image = image
        self.channel_first = image.shape[0] == 3 and image.shape[-1] != 3
        full_h, full_w = image.shape[1:] if self.channel_first else image.shape[:2]
        self.x0, self.y0, self.width, self.height = crop or (0, 0, full_w, full_h)
        self.tile = tile
        self.compartment = compartment
        self.radius_px = float(radius_px)
        blob_profile(np.zeros(1), compartment, radius_px)  # fail early on a bad compartment
        od = np.asarray(level_od, np.float32)[np.asarray(levels, np.int64)]
        keep = od > 0  # level-0 cells draw nothing
        self.centers = np.asarray(centers, np.float64)[keep] - (self.x0, self.y0)
        self.od = od[keep]
        # Cells bucketed by the tile holding their centre; a blob reaches at most
        # radius + 2 px beyond it, so a tile looks at its 8 neighbours' buckets as well
        # (radius_px must stay below the tile size).
        self.reach = self.radius_px + 2.0
        if self.reach >= tile:
            raise ValueError(f"cell radius {radius_px} px does not fit tiles of {tile} px")
        self.buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (ty, tx) in enumerate(np.floor(self.centers[:, ::-1] / tile).astype(int).tolist()):
            self.buckets[(ty, tx)].append(i)

    def _he_tile(self, ty: int, tx: int) -> np.ndarray:
        """The H&E under tile ``(ty, tx)`` as ``(tile, tile, 3)``, white past the crop."""
        t = self.tile
        y, x = ty * t, tx * t
        h, w = min(t, self.height - y), min(t, self.width - x)
        out = np.full((t, t, 3), 255, np.uint8)
        ys, xs = slice(self.y0 + y, self.y0 + y + h), slice(self.x0 + x, self.x0 + x + w)
        if self.channel_first:
            block = self.image[:, ys, xs].transpose(1, 2, 0)
        else:
            block = self.image[ys, xs]
        out[:h, :w] = block
        return out

    def dab_tile(self, ty: int, tx: int) -> np.ndarray:
        """``float32 (tile, tile)`` DAB optical density of tile ``(ty, tx)``."""
        t = self.tile
        dab = np.zeros((t, t), np.float32)
        r = int(np.ceil(self.reach))
        for by in (ty - 1, ty, ty + 1):
            for bx in (tx - 1, tx, tx + 1):
                for i in self.buckets.get((by, bx), ()):
                    cx, cy = self.centers[i, 0] - tx * t, self.centers[i, 1] - ty * t
                    xa, xb = max(int(cx) - r, 0), min(int(cx) + r + 2, t)
                    ya, yb = max(int(cy) - r, 0), min(int(cy) + r + 2, t)
                    if xa >= xb or ya >= yb:
                        continue
                    yy, xx = np.ogrid[ya:yb, xa:xb]
                    weight = blob_profile(np.hypot(xx - cx, yy - cy), self.compartment,
                                          self.radius_px)
                    np.maximum(dab[ya:yb, xa:xb], self.od[i] * weight, out=dab[ya:yb, xa:xb])
        return dab

    def render_tile(self, ty: int, tx: int) -> np.ndarray:
        """``uint8 (tile, tile, 3)`` virtual IHC of tile ``(ty, tx)``."""
        od = separate_stains(self._he_tile(ty, tx))
        od[..., 1] = 0.0  # eosin is not part of an IHC slide
        od[..., 2] = self.dab_tile(ty, tx)
        return combine_stains(od)

    def render(self) -> np.ndarray:
        """The whole (cropped) image, ``uint8 (height, width, 3)``: for small images and tests."""
        t = self.tile
        rows = -(-self.height // t)
        cols = -(-self.width // t)
        out = np.empty((rows * t, cols * t, 3), np.uint8)
        for ty in range(rows):
            for tx in range(cols):
                out[ty * t:(ty + 1) * t, tx * t:(tx + 1) * t] = self.render_tile(ty, tx)
        return out[:self.height, :self.width]
