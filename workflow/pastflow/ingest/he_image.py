"""The H&E as a SpatialData image element, read lazily from the slide; and H&E export to OME-TIFF.

The element is what a viewer (napari-spatialdata) shows next to the cells; the patches stage
never reads it: it reads the original pyramid at ``uns["pastflow"]["slide_path"]``. So a huge
slide is stored from a coarser pyramid level (at most ``max_side`` pixels a side), with a
``Scale`` transform to ``he_pixels``, and the sample says so in ``uns``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import weakref
from pathlib import Path

import dask.array as da
import numpy as np

from pastflow.contracts import HE_SPACE
from pastflow.slide import Slide, open_slide

log = logging.getLogger(__name__)

CHUNK_PX = 1024
MIN_SCALE_SIDE = 256  # the multiscale pyramid stops once a level is this small
TIFF_TILE = 256


class _LevelArray:
    """One level of a slide as a read-only array ``uint8 (h, w, 3)`` for ``dask.array.from_array``.

    Each dask chunk becomes one :meth:`Slide.read_region` call, so nothing is decoded until the
    chunk is written, and only a few chunks are in memory at once.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, slide: Slide, level: int):
        self.slide = slide
        self.level = level
        width, height = slide.level_dimensions[level]
        self.shape = (height, width, 3)

    def __getitem__(self, key) -> np.ndarray:
        ys, xs, cs = (key + (slice(None),) * 3)[:3]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        region = self.slide.read_region(self.level, x0, y0, x1 - x0, y1 - y0)
        return region[:, :, cs]


def _lazy_level(slide: Slide, level: int, chunk: int) -> da.Array:
    """``level`` as a dask array; the slide is closed once no graph uses it."""
    key = f"{slide.path.resolve()}:{slide.path.stat().st_mtime_ns}:{level}"
    token = hashlib.sha1(key.encode()).hexdigest()
    source = _LevelArray(slide, level)
    weakref.finalize(source, slide.close)
    return da.from_array(source, chunks=(chunk, chunk, 3), name=f"he-{token}",
                         lock=False, asarray=True, fancy=False,
                         meta=np.empty((0, 0, 0), np.uint8))


def choose_stored_level(slide: Slide, max_side: int) -> tuple[int, int]:
    """``(level, extra integer downsample)`` so that the stored image is at most ``max_side`` a side.

    The finest pyramid level that fits; when none does (a huge single-level JPEG), the coarsest
    level block-averaged by the smallest integer factor that fits.
    """
    for level, (w, h) in enumerate(slide.level_dimensions):
        if max(w, h) <= max_side:
            return level, 1
    level = slide.level_count - 1
    w, h = slide.level_dimensions[level]
    return level, math.ceil(max(w, h) / max_side)


def he_image_element(slide_path: str | Path, max_side: int, chunk: int = CHUNK_PX):
    """The H&E at ``slide_path`` as a lazy multiscale image element in ``he_pixels``.

    Returns:
        ``(element, downsample)``: a ``DataTree`` (``c, y, x`` uint8, channels r, g, b) whose
        transform to ``he_pixels`` is the identity (``downsample == 1``) or a ``Scale`` by the
        level-0 pixels per stored pixel (``downsample > 1``).
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    slide = open_slide(slide_path)
    level, factor = choose_stored_level(slide, max_side)
    pixels = _lazy_level(slide, level, chunk * factor)
    if factor > 1:
        # Block mean in float, back to uint8: memory stays per chunk.
        pixels = da.coarsen(np.mean, pixels.astype(np.float32), {0: factor, 1: factor},
                            trim_excess=True).round().astype(np.uint8)
    height, width = pixels.shape[:2]
    w0, h0 = slide.level_dimensions[0]
    sx, sy = w0 / width, h0 / height
    downsample = (sx + sy) / 2
    transform = Identity() if level == 0 and factor == 1 else Scale([sy, sx], axes=("y", "x"))
    n_scales = max(0, int(math.floor(math.log2(max(1, min(width, height) / MIN_SCALE_SIDE)))))
    element = Image2DModel.parse(
        pixels.transpose(2, 0, 1), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
        transformations={HE_SPACE: transform},
        scale_factors=[2] * n_scales if n_scales else None,
        chunks=(3, chunk, chunk),
    )
    if downsample > 1:
        log.info("%s: H&E stored from level %d%s (%d x %d px, %.2f level-0 px per px)", slide.path.name,
                 level, f" / {factor}" if factor > 1 else "", width, height, downsample)
    return element, downsample


def export_ome_tiff(levels: list, path: str | Path, mpp: float, tile: int = TIFF_TILE) -> None:
    """Write an RGB pyramid to ``path`` as a tiled OME-TIFF (reduced levels in SubIFDs, zlib).

    ``levels``: arrays ``(c=3, y, x)`` uint8, finest first, each about half the previous (numpy
    or dask: read one strip of tiles at a time). ``mpp``: microns per level-0 pixel. The file is
    what :func:`pastflow.slide.open_slide` and the patches stage read.
    """
    import tifffile

    def tiles(level) -> np.ndarray:
        _, height, width = level.shape
        for y0 in range(0, height, tile):
            strip = np.asarray(level[:, y0:y0 + tile, :]).transpose(1, 2, 0)
            for x0 in range(0, width, tile):
                block = np.zeros((tile, tile, 3), np.uint8)
                part = strip[:, x0:x0 + tile]
                block[:part.shape[0], :part.shape[1]] = part
                yield block

    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i, level in enumerate(levels):
            _, height, width = level.shape
            kwargs = dict(shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile),
                          photometric="rgb", compression="zlib", resolutionunit="CENTIMETER",
                          resolution=(1e4 / (mpp * levels[0].shape[2] / width),) * 2)
            if i == 0:
                kwargs.update(subifds=len(levels) - 1, metadata={
                    "axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"})
            else:
                kwargs.update(subfiletype=1, metadata=None)
            tif.write(tiles(level), **kwargs)
