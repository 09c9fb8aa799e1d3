"""Tiled, pyramidal TIFF writers that never hold a whole level in memory.

Two layouts, both JPEG tiles with the pixel size recorded:

- ``generic``: reduced levels are top-level IFDs with ``NewSubfileType = 1`` and resolution
  tags in pixels per centimetre. OpenSlide opens it as ``generic-tiff`` with every level and
  ``openslide.mpp-x``; tifffile sees one series with all levels.
- ``ome``: OME-TIFF with the reduced levels in SubIFDs (how 10x ships post-Xenium H&E);
  tifffile reads all levels, OpenSlide only level 0.

Level 0 comes tile by tile from a :class:`TileSource` (e.g. the H&E renderer). While a level
is written, its 2x2-averaged copy is appended, one tile row at a time, to a raw spill file
beside the output; the next level is then read back from that file a tile row at a time.
Peak memory is about one tile row of level 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import tifffile

from pastflow.progress import ProgressBar, progress_bar

log = logging.getLogger(__name__)


class TileSource(Protocol):
    """Level 0 of an image, served as tiles in row-major order."""

    height: int  # pixels
    width: int
    tile: int

    def render_tile(self, ty: int, tx: int) -> np.ndarray:
        """``(tile, tile[, samples])`` array of tile row ``ty``, column ``tx`` (may overhang)."""


class ArrayTiles:
    """A :class:`TileSource` over an in-memory ``(h, w[, samples])`` array (edges padded)."""

    def __init__(self, array: np.ndarray, tile: int = 512):
        self.array = array
        self.height, self.width = array.shape[:2]
        self.tile = tile

    def render_tile(self, ty: int, tx: int) -> np.ndarray:
        t = self.tile
        block = self.array[ty * t:(ty + 1) * t, tx * t:(tx + 1) * t]
        pad = [(0, t - block.shape[0]), (0, t - block.shape[1])] + [(0, 0)] * (block.ndim - 2)
        return np.pad(block, pad, mode="edge") if any(p[1] for p in pad) else block


def pyramid_shapes(height: int, width: int, min_size: int = 1000) -> list[tuple[int, int]]:
    """Level shapes ``(h, w)``, halving (rounding up) until the longer side is below ``min_size``."""
    shapes = [(height, width)]
    while max(shapes[-1]) >= min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _downsample(band: np.ndarray) -> np.ndarray:
    """2x2 box average of a ``(2h, 2w[, s])`` band, same dtype (rounded half up)."""
    h, w = band.shape[0] // 2, band.shape[1] // 2
    wide = np.uint16 if band.dtype == np.uint8 else np.uint32  # holds 4x the maximum
    acc = band[0:2 * h:2, 0:2 * w:2].astype(wide)
    acc += band[1:2 * h:2, 0:2 * w:2]
    acc += band[0:2 * h:2, 1:2 * w:2]
    acc += band[1:2 * h:2, 1:2 * w:2]
    acc += 2
    acc >>= 2
    return acc.astype(band.dtype)


class _SpillFile:
    """A raw row-major image of fixed width, appended a band at a time and read back by rows."""

    def __init__(self, directory: Path, width: int, sample_shape: tuple[int, ...], dtype: np.dtype):
        fd, name = tempfile.mkstemp(prefix=".pyramid-", suffix=".raw", dir=directory)
        os.close(fd)
        self.path = Path(name)
        self.width = width
        self.sample_shape = sample_shape
        self.dtype = np.dtype(dtype)
        self.row_bytes = width * int(np.prod(sample_shape, dtype=int)) * self.dtype.itemsize
        self.rows = 0
        self._fh = open(self.path, "r+b")

    def append(self, band: np.ndarray) -> None:
        self._fh.seek(self.rows * self.row_bytes)
        self._fh.write(np.ascontiguousarray(band).tobytes())
        self.rows += band.shape[0]

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """Rows ``[start, start + count)``; rows past the end repeat the last one."""
        stop = min(start + count, self.rows)
        self._fh.seek(start * self.row_bytes)
        data = np.frombuffer(self._fh.read((stop - start) * self.row_bytes), dtype=self.dtype)
        band = data.reshape(stop - start, self.width, *self.sample_shape)
        if stop - start < count:
            band = np.concatenate([band, np.repeat(band[-1:], count - (stop - start), axis=0)])
        return band

    def close(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


class _SpillTiles:
    """A :class:`TileSource` reading a level back from its spill file."""

    def __init__(self, spill: _SpillFile, height: int, width: int, tile: int):
        self.spill, self.height, self.width, self.tile = spill, height, width, tile
        self._band_row = -1
        self._band = None

    def render_tile(self, ty: int, tx: int) -> np.ndarray:
        t = self.tile
        if ty != self._band_row:
            band = self.spill.read_rows(ty * t, t)
            need = -(-self.width // t) * t
            if band.shape[1] < need:
                pad = [(0, 0), (0, need - band.shape[1])] + [(0, 0)] * (band.ndim - 2)
                band = np.pad(band, pad, mode="edge")
            self._band, self._band_row = band, ty
        return self._band[:, tx * t:(tx + 1) * t]


def _level_tiles(source: TileSource, height: int, width: int, spill: _SpillFile | None,
                 progress: ProgressBar | None) -> Iterator[np.ndarray]:
    """Yield the tiles of one level in row-major order; spill its 2x downsample on the way.

    A whole tile row is rendered and spilled before its tiles are yielded: tifffile stops
    pulling after the last tile, so nothing may be left to do after a yield.
    """
    t = source.tile
    n_ty, n_tx = -(-height // t), -(-width // t)
    for ty in range(n_ty):
        row = [source.render_tile(ty, tx) for tx in range(n_tx)]
        if spill is not None:
            spill.append(_downsample(np.concatenate(row, axis=1)))
        for tile in row:
            if progress is not None:
                progress.update(1)
            yield tile
        del row


def _single_threaded_blas():
    """Tile sources do many tiny GEMMs; on a busy machine BLAS threads only wait on each other
    (30x slower measured on 2 shared cores), so pin BLAS to one thread while writing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def write_pyramid(path: str | Path, source: TileSource, mpp: float, layout: str = "generic",
                  compression: str = "jpeg", quality: int = 90, min_size: int = 1000,
                  description: str | None = None, channel_names: list[str] | None = None,
                  maxworkers: int = 1, progress: bool = True) -> list[tuple[int, int]]:
    """Write ``source`` as a tiled pyramid at ``path`` (written in place: wrap in ``atomic_path``).

    ``mpp``: microns per level-0 pixel; level ``k`` records ``mpp * 2**k``.
    ``layout``: ``"generic"`` (top-level reduced IFDs, OpenSlide-readable) or ``"ome"``
    (OME-TIFF, reduced levels in SubIFDs). ``compression``: ``"jpeg"`` (RGB uint8; ``quality``
    0-100) or a lossless codec such as ``"zlib"`` for other data. Returns the level shapes.
    """
    if layout not in ("generic", "ome"):
        raise ValueError(f"unknown layout {layout!r}")
    path = Path(path)
    first = source.render_tile(0, 0)
    sample_shape = first.shape[2:]
    rgb = sample_shape == (3,)
    shapes = pyramid_shapes(source.height, source.width, min_size)
    t = source.tile
    n_tiles = sum(-(-h // t) * -(-w // t) for h, w in shapes)
    common = dict(
        dtype=first.dtype,
        tile=(t, t),
        photometric="rgb" if rgb else "minisblack",
        compression=compression,
        # zlib at level 1: ~8x faster than its default on noisy images, ~2% larger files.
        compressionargs={"level": quality} if compression == "jpeg" else
        {"level": 1} if compression == "zlib" else None,
        resolutionunit="CENTIMETER",
        maxworkers=maxworkers,
    )
    bar = progress_bar(total=n_tiles, desc=f"writing {path.name}", unit="tile", enabled=progress)
    spills: list[_SpillFile] = []
    try:
        with _single_threaded_blas(), tifffile.TiffWriter(path, bigtiff=True, ome=(layout == "ome")) as tif:
            level_source: TileSource = source
            for level, (h, w) in enumerate(shapes):
                spill = None
                if level + 1 < len(shapes):
                    spill = _SpillFile(path.parent, -(-w // t) * t // 2, sample_shape, first.dtype)
                    spills.append(spill)
                kwargs = dict(common, shape=(h, w) + sample_shape,
                              resolution=(1e4 / (mpp * 2**level), 1e4 / (mpp * 2**level)))
                if level == 0:
                    if layout == "ome":
                        meta = {"axes": "YXS" if sample_shape else "YX", "PhysicalSizeX": mpp,
                                "PhysicalSizeXUnit": "µm", "PhysicalSizeY": mpp,
                                "PhysicalSizeYUnit": "µm"}
                        if channel_names:
                            meta["Channel"] = {"Name": channel_names}
                        kwargs.update(subifds=len(shapes) - 1, metadata=meta)
                    else:
                        kwargs.update(metadata=None, description=description, subfiletype=0)
                else:
                    kwargs.update(subfiletype=1, metadata=None)
                tif.write(_level_tiles(level_source, h, w, spill, bar), **kwargs)
                if spill is not None:
                    level_source = _SpillTiles(spill, *shapes[level + 1], t)
    finally:
        bar.close()
        for spill in spills:
            spill.close()
    log.info("wrote %s: %d levels, level 0 %d x %d px at %.4g um/px", path, len(shapes),
             source.width, source.height, mpp)
    return shapes
