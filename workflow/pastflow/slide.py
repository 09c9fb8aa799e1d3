"""Open an H&E slide of any supported format and read it by region or strip by strip.

:func:`open_slide` returns a :class:`Slide`: one interface over three backends.

- ``tifffile`` for OME-TIFF (pyramid levels in SubIFDs, which OpenSlide does not see) and
  for generic TIFFs, tiled or striped. This is the fast path: each tile's compressed bytes
  are read with ``os.pread`` and decoded by tifffile's own decoder (imagecodecs: libjpeg-turbo
  for JPEG), optionally several rows of tiles at once in threads (decoding releases the GIL).
- OpenSlide for vendor WSIs (Aperio SVS, Hamamatsu NDPI, MIRAX MRXS, Leica SCN, ...).
- Pillow for JPEG and PNG: one level, decoded whole when opened.

Coordinates: ``(x, y)`` in the pixels of the level being read, origin top-left; arrays are
``uint8 (h, w, 3)`` RGB. Anything outside the image (or transparent in OpenSlide, e.g. MRXS
regions that were never scanned) reads as white (255), the colour of empty glass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from pastflow.contracts import LEVEL_MPP_TOLERANCE
from pastflow.errors import InputError

log = logging.getLogger(__name__)

WHITE = 255
# Resolution tags coarser than this are display defaults (72, 96, 300 dpi), not a scan.
MAX_PLAUSIBLE_MPP = 20.0
# Finer than this is below what light microscopy resolves: a unit mix-up, not a scan.
MIN_PLAUSIBLE_MPP = 0.05
# Decoded RGB bytes per byte of file: real slides stay below ~300 (an all-white JPEG), while a
# decompression bomb (or a header declaring a size its data do not have) is far above. Checked
# only above DECODED_BYTES_FLOOR, so small placeholder images stay readable.
MAX_DECODED_PER_FILE_BYTE = 1000
DECODED_BYTES_FLOOR = 1 << 30
PILLOW_SUFFIXES = {".jpg", ".jpeg", ".png"}
_OME_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}
_TIFF_UNIT_TO_UM = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}  # ResolutionUnit tag values


class Slide(ABC):
    """A slide opened for reading. Use :func:`open_slide` to get one.

    Attributes:
        path: the file.
        backend: ``"tifffile"``, ``"openslide"`` or ``"pillow"``.
        level_dimensions: ``(width, height)`` in pixels, per level, level 0 first (finest).
        level_downsamples: level-0 pixels per pixel of each level (1.0 for level 0).
        mpp: microns per level-0 pixel, or None when the file does not say.
    """

    backend: str

    def __init__(self, path: Path, level_dimensions, level_downsamples, mpp: float | None):
        self.path = path
        self.level_dimensions: list[tuple[int, int]] = [
            tuple(map(int, d)) for d in level_dimensions
        ]
        self.level_downsamples: list[float] = [float(d) for d in level_downsamples]
        self.mpp = mpp

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int, mpp: float | None = None) -> float | None:
        """Microns per pixel of ``level`` (from ``mpp`` for level 0 if given, else the file's)."""
        mpp = self.mpp if mpp is None else mpp
        return None if mpp is None else mpp * self.level_downsamples[self._check_level(level)]

    def read_region(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Pixels ``[y0, y0 + h) x [x0, x0 + w)`` of ``level`` as ``uint8 (h, w, 3)``.

        Coordinates are in that level's pixels and may run past the image: outside reads white.
        """
        self._check_level(level)
        if w < 0 or h < 0:
            raise ValueError(f"region size must be >= 0, got w={w}, h={h}")
        return self._read_region(level, int(x0), int(y0), int(w), int(h))

    def iter_strips(
        self,
        level: int,
        *,
        workers: int = 1,
        channels_first: bool = False,
        recycle: queue.SimpleQueue | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(y0, strip)`` top to bottom: full-width strips ``uint8 (rows, width, 3)``.

        Strips follow the file's own rows of tiles (or strips), so every tile of the level is
        decoded exactly once and memory holds only a few rows of tiles, whatever the slide size.
        ``workers`` threads decode rows in parallel (tifffile backend only).
        ``channels_first=True`` yields ``(3, rows, width)`` instead, each tile transposed as it
        is placed (one pass over the pixels instead of two for channel-first consumers).
        ``recycle``: a queue on which the consumer puts strips it is done with; they are
        refilled instead of allocating new ones (fresh memory costs page faults: ~0.5 s per
        GB here). Only the tifffile backend uses it.
        """
        self._check_level(level)
        return self._iter_strips(level, max(1, int(workers)), bool(channels_first), recycle)

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Slide {self.path.name} backend={self.backend} levels={self.level_dimensions} "
            f"mpp={self.mpp}>"
        )

    def _check_level(self, level: int) -> int:
        if not 0 <= level < self.level_count:
            raise IndexError(
                f"{self.path}: level {level} does not exist ({self.level_count} levels)"
            )
        return level

    @abstractmethod
    def _read_region(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray: ...

    @abstractmethod
    def _iter_strips(
        self, level: int, workers: int, channels_first: bool, recycle: queue.SimpleQueue | None
    ) -> Iterator[tuple[int, np.ndarray]]: ...


def open_slide(path: str | Path, backend: str | None = None) -> Slide:
    """Open ``path`` with the backend that reads its format whole (see the module docstring).

    ``backend`` (``"tifffile"``, ``"openslide"``, ``"pillow"``) forces one, e.g. to compare them.

    Raises:
        InputError: the file is missing, unsupported, corrupt or truncated, declares far more
            pixels than its bytes can hold (:func:`check_declared_size`), or records an
            invalid resolution (NaN, zero or negative microns per pixel).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "slide file not found")
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown slide backend {backend!r}; choose from {sorted(BACKENDS)}")
        return BACKENDS[backend](path)
    if path.suffix.lower() in PILLOW_SUFFIXES:
        return _PillowSlide(path)
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as err:
        raise InputError(path, f"OpenSlide cannot read the file: {err}") from err
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                is_ome, n_pages = tif.is_ome, len(tif.pages)
        except Exception as err:  # tifffile raises several types on a broken header
            raise InputError(path, f"not a readable TIFF ({err})") from err
        if n_pages == 0:
            raise InputError(path, "the TIFF holds no readable image (truncated or corrupt file)")
        # OME pyramids hide their levels from OpenSlide; plain TIFFs decode faster directly.
        if is_ome or vendor in (None, "generic-tiff"):
            return _TiffSlide(path)
    if vendor is not None:
        return _OpenSlideSlide(path)
    return _PillowSlide(path)


def check_slide_before_decoding(path: str | Path, max_jpeg_png_px: int | None) -> None:
    """Refuse a slide that would exhaust memory or time, reading only its header.

    JPEG / PNG are decoded whole (:class:`_PillowSlide`), so their declared width x height must
    stay within ``max_jpeg_png_px`` (config key ``ingest.max_jpeg_png_px``; None = no limit);
    every format's declared size must fit its file size (:func:`check_declared_size`); TIFF
    tile tables are checked when opened (:class:`_TiffSlide`).
    """
    path = Path(path)
    if path.suffix.lower() not in PILLOW_SUFFIXES:
        open_slide(path).close()  # headers and tile tables only: nothing is decoded
        return
    width, height = _pillow_size(path)
    if max_jpeg_png_px is not None and width * height > max_jpeg_png_px:
        raise InputError(path, f"declares {width} x {height} px ({width * height:,} px), over "
                               f"the limit for JPEG/PNG slides, config key "
                               f"ingest.max_jpeg_png_px = {max_jpeg_png_px:,} (they are decoded "
                               f"whole: {3 * width * height / 1e9:.1f} GB); convert it to a "
                               "tiled pyramidal TIFF, or raise the key if the memory is there")
    check_declared_size(path, width, height, path.stat().st_size)


def check_declared_size(path: Path, width: int, height: int, data_bytes: int) -> None:
    """Refuse an image whose declared ``width x height`` cannot come from ``data_bytes`` bytes.

    A decompression bomb (a PNG of zeros declaring 40,000 x 40,000 px) or a header whose data
    are missing would otherwise be decoded for minutes into gigabytes of nothing.
    """
    decoded = 3 * int(width) * int(height)
    if decoded > DECODED_BYTES_FLOOR and decoded > MAX_DECODED_PER_FILE_BYTE * max(data_bytes, 1):
        raise InputError(path, f"declares {width} x {height} px ({decoded / 1e9:.1f} GB decoded) "
                               f"in {data_bytes:,} bytes of image data, more than "
                               f"{MAX_DECODED_PER_FILE_BYTE}:1 compression that no scanned slide "
                               "reaches: a decompression bomb or a corrupt header; re-export "
                               "the slide from the scanner software")


def _pillow_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from a JPEG / PNG header, without decoding."""
    from PIL import Image

    try:
        with _unlimited_pixels(Image), Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports broken files as these
        raise InputError(path, f"cannot decode image ({err})") from err


def check_file_mpp(path: Path, mpp: float | None, where: str) -> float | None:
    """A resolution read from the file's metadata (``where`` names the field): None stays
    None; NaN, zero or negative is an :class:`InputError` (it would reach every size in
    microns)."""
    if mpp is None:
        return None
    if not (np.isfinite(mpp) and mpp > 0):
        raise InputError(path, f"the file records an invalid resolution ({where} = {mpp} um/px); "
                               "fix the slide's metadata (re-export it from the scanner "
                               "software), or convert it to a format without one and give the "
                               "sample sheet column mpp")
    return float(mpp)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# --------------------------------------------------------------------------- tifffile


class _TiffSlide(Slide):
    """OME-TIFF and generic TIFF, read tile by tile with tifffile's decoder."""

    backend = "tifffile"

    def __init__(self, path: Path):
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as err:  # tifffile raises several types on a broken header
            raise InputError(path, f"not a readable TIFF ({err})") from err
        try:
            try:
                self._pages = [level.keyframe for level in self._tif.series[0].levels]
                mpp = _file_mpp(self._tif, self._pages[0])
            except Exception as err:
                raise InputError(path, f"not a readable TIFF ({err})") from err
            mpp = check_file_mpp(path, mpp, "OME PhysicalSizeX / Aperio MPP / resolution tags")
            for page in self._pages:
                _check_page(path, page)
            _check_not_truncated(path, self._pages)
            _check_has_data(path, self._pages[0])
        except BaseException:
            self._tif.close()
            raise
        dims = [(p.imagewidth, p.imagelength) for p in self._pages]
        w0, h0 = dims[0]
        downsamples = [(w0 / w + h0 / h) / 2 for w, h in dims]  # as OpenSlide averages them
        if mpp is not None and not 0 < mpp <= MAX_PLAUSIBLE_MPP:
            log.warning("%s: ignoring implausible resolution %.4g um/px", path, mpp)
            mpp = None
        super().__init__(path, dims, downsamples, mpp)
        self._fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()

    # A level is a grid of segments (tiles, or full-width strips) of chunk_h x chunk_w pixels.
    def _grid(self, level: int) -> tuple[int, int, int, int]:
        page = self._pages[level]
        chunk_h, chunk_w = page.chunks[0], page.chunks[1]
        n_rows, n_cols = page.chunked[0], page.chunked[1]
        return chunk_h, chunk_w, n_rows, n_cols

    def _decode_segment(self, level: int, index: int) -> np.ndarray | None:
        """Decoded segment ``index`` of ``level``, ``(chunk_h, chunk_w, samples)``, or None."""
        page = self._pages[level]
        nbytes = int(page.databytecounts[index])
        if nbytes == 0:
            return None  # sparse tile: never scanned
        data = os.pread(self._fd, nbytes, int(page.dataoffsets[index]))
        try:
            array, _, _ = page.decode(
                data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader, _fullsize=True
            )
        except Exception as err:
            raise InputError(self.path, f"cannot decode level {level} tile {index}: {err}") from err
        if array is None:
            return None
        return array.reshape(array.shape[-3:])

    @staticmethod
    def _paste(
        out: np.ndarray,
        seg: np.ndarray | None,
        oy: int,
        ox: int,
        sy: int,
        sx: int,
        h: int,
        w: int,
        channels_first: bool = False,
    ) -> None:
        """Copy ``seg[sy:sy+h, sx:sx+w]`` to ``out`` at ``(oy, ox)``; ``out`` is (3, H, W) if
        ``channels_first``. Grey (1 sample) broadcasts over the 3 channels; RGBA loses alpha."""
        if seg is None:
            return  # `out` is already white there
        part = seg[sy : sy + h, sx : sx + w, :3]
        if channels_first:
            out[:, oy : oy + h, ox : ox + w] = part.transpose(2, 0, 1)
        else:
            out[oy : oy + h, ox : ox + w] = part

    def _read_region(self, level, x0, y0, w, h):
        out = np.full((h, w, 3), WHITE, np.uint8)
        width, height = self.level_dimensions[level]
        chunk_h, chunk_w, _, n_cols = self._grid(level)
        ax0, ay0 = max(x0, 0), max(y0, 0)
        ax1, ay1 = min(x0 + w, width), min(y0 + h, height)
        if ax0 >= ax1 or ay0 >= ay1:
            return out
        for row in range(ay0 // chunk_h, (ay1 - 1) // chunk_h + 1):
            for col in range(ax0 // chunk_w, (ax1 - 1) // chunk_w + 1):
                seg = self._decode_segment(level, row * n_cols + col)
                ty0, tx0 = row * chunk_h, col * chunk_w
                sy0, sx0 = max(ay0, ty0), max(ax0, tx0)
                sy1, sx1 = min(ay1, ty0 + chunk_h), min(ax1, tx0 + chunk_w)
                self._paste(
                    out, seg, sy0 - y0, sx0 - x0, sy0 - ty0, sx0 - tx0, sy1 - sy0, sx1 - sx0
                )
        return out

    def _iter_strips(self, level, workers, channels_first, recycle):
        width, height = self.level_dimensions[level]
        chunk_h, chunk_w, n_rows, n_cols = self._grid(level)

        def new_strip(shape: tuple[int, int, int]) -> np.ndarray:
            try:
                strip = recycle.get_nowait() if recycle is not None else None
            except queue.Empty:
                strip = None
            return (
                strip if strip is not None and strip.shape == shape else np.empty(shape, np.uint8)
            )

        def decode_row(row: int) -> tuple[int, np.ndarray]:
            y0 = row * chunk_h
            rows = min(chunk_h, height - y0)
            # Tiles cover the strip; only empty (never scanned) ones leave white to fill.
            strip = new_strip((3, rows, width) if channels_first else (rows, width, 3))
            for col in range(n_cols):
                x0 = col * chunk_w
                seg = self._decode_segment(level, row * n_cols + col)
                w = min(chunk_w, width - x0)
                if seg is None:
                    (strip[:, :, x0 : x0 + w] if channels_first else strip[:, x0 : x0 + w])[
                        ...
                    ] = WHITE
                self._paste(strip, seg, 0, x0, 0, 0, rows, w, channels_first)
            return y0, strip

        if workers == 1:
            for row in range(n_rows):
                yield decode_row(row)
            return
        # Whole rows per task: decoding and pasting release the GIL, so `workers` rows progress
        # at once with few thread hand-offs. At most 2 x workers rows are in flight (bounded
        # memory).
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[Future] = deque()
            next_row = 0
            for _ in range(n_rows):
                while next_row < n_rows and len(pending) < 2 * workers:
                    pending.append(pool.submit(decode_row, next_row))
                    next_row += 1
                yield pending.popleft().result()


def _check_page(path: Path, page) -> None:
    """Reject layouts the tile reader does not handle, naming what was found."""
    if page.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {page.dtype} (8-bit RGB expected)")
    if page.imagedepth > 1 or page.tiledepth > 1:
        raise InputError(path, "unsupported volumetric TIFF (tile depth > 1)")
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        raise InputError(
            path, "unsupported TIFF layout: separate colour planes (PlanarConfiguration=2)"
        )
    if page.samplesperpixel not in (1, 3, 4):
        raise InputError(path, f"unsupported TIFF with {page.samplesperpixel} samples per pixel")
    if page.photometric not in (1, 2, 6):  # MINISBLACK, RGB, YCBCR
        raise InputError(path, f"unsupported TIFF photometric interpretation {page.photometric!s}")


def _check_not_truncated(path: Path, pages) -> None:
    size = path.stat().st_size
    for level, page in enumerate(pages):
        ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        if ends.size and int(ends.max()) > size:
            raise InputError(
                path,
                f"truncated file: level {level} image data ends at byte "
                f"{int(ends.max())} but the file has {size} bytes",
            )


def _check_has_data(path: Path, page) -> None:
    """Refuse a level 0 without image data, before any tile is read: every tile empty (byte
    count 0) or absent (offset 0, the file header), or far fewer distinct bytes than its
    declared size.
    Such a file reads as a blank slide of any declared size, for as long as that takes."""
    counts = np.asarray(page.databytecounts, np.int64)
    offsets = np.asarray(page.dataoffsets, np.int64)
    present = (counts > 0) & (offsets > 0)
    if counts.size and not present.any():
        raise InputError(path, f"no image data: all {counts.size} tiles of level 0 "
                               f"({page.imagewidth} x {page.imagelength} px) are empty or "
                               "absent (TileByteCounts 0 or TileOffsets 0); re-export the slide")
    # Tiles may share their bytes (one tile's offset listed for all): count each block once.
    blocks = np.unique(np.stack([offsets[present], counts[present]]), axis=1)
    check_declared_size(path, page.imagewidth, page.imagelength, int(blocks[1].sum()))


def _file_mpp(tif, page) -> float | None:
    """Microns per level-0 pixel from OME-XML, an Aperio description, or resolution tags."""
    if tif.is_ome:
        return _ome_mpp(tif.ome_metadata)
    if tif.is_svs:  # reaches this backend only when OpenSlide could not open it
        from tifffile.tifffile import svs_description_metadata  # not re-exported by tifffile

        try:
            return float(svs_description_metadata(page.description)["MPP"])
        except (ValueError, KeyError):
            return None
    return _tag_mpp(page)


def _ome_mpp(ome_xml: str | None) -> float | None:
    """PhysicalSizeX of the first OME Image, in microns."""
    if not ome_xml:
        return None
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            size = element.get("PhysicalSizeX")
            unit = element.get("PhysicalSizeXUnit", "µm")
            if size is None or unit not in _OME_UNIT_TO_UM:
                return None
            return float(size) * _OME_UNIT_TO_UM[unit]
    return None


def _tag_mpp(page) -> float | None:
    """Microns per pixel from the XResolution and ResolutionUnit tags."""
    unit = page.tags.valueof(296, default=2)  # TIFF default unit: inch
    xres = page.tags.valueof(282)
    if xres is None or int(unit) not in _TIFF_UNIT_TO_UM:
        return None
    pixels_per_unit = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
    if pixels_per_unit <= 0:
        return None
    return _TIFF_UNIT_TO_UM[int(unit)] / pixels_per_unit


# --------------------------------------------------------------------------- OpenSlide


class _OpenSlideSlide(Slide):
    """Vendor WSIs through OpenSlide."""

    backend = "openslide"

    def __init__(self, path: Path):
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as err:
            raise InputError(path, f"OpenSlide cannot open the file: {err}") from err
        props = self._osr.properties
        raw = props.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            value = float(raw) if raw else None
        except ValueError:
            value = float("nan")
        try:
            mpp = check_file_mpp(path, value, "openslide.mpp-x")
        except InputError:
            self._osr.close()
            raise
        super().__init__(path, self._osr.level_dimensions, self._osr.level_downsamples, mpp)
        self._tile_rows = [
            int(props.get(f"openslide.level[{i}].tile-height", 256))
            for i in range(self.level_count)
        ]

    def close(self) -> None:
        self._osr.close()

    def _read_region(self, level, x0, y0, w, h):
        import openslide

        if w == 0 or h == 0:
            return np.full((h, w, 3), WHITE, np.uint8)
        ds = self.level_downsamples[level]
        try:
            rgba = np.asarray(
                self._osr.read_region((round(x0 * ds), round(y0 * ds)), level, (w, h))
            )
        except openslide.OpenSlideError as err:
            raise InputError(self.path, f"OpenSlide cannot read level {level}: {err}") from err
        return _rgba_on_white(rgba)

    def _iter_strips(self, level, workers, channels_first, recycle):
        width, height = self.level_dimensions[level]
        rows = self._tile_rows[level]
        for y0 in range(0, height, rows):
            strip = self._read_region(level, 0, y0, width, min(rows, height - y0))
            yield y0, _to_channels_first(strip) if channels_first else strip


def _to_channels_first(strip: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(strip.transpose(2, 0, 1))


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA over white -> ``uint8 (h, w, 3)``."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + WHITE * (1.0 - a)
    return np.rint(rgb).astype(np.uint8)


# --------------------------------------------------------------------------- Pillow


class _PillowSlide(Slide):
    """JPEG / PNG: a single level held in memory.

    ``mpp`` is None: JPEG and PNG densities are display settings, not the scanner's resolution,
    so the caller gives it (the ingested sample's ``uns["pastflow"]["mpp"]``).
    """

    backend = "pillow"

    def __init__(self, path: Path):
        from PIL import Image

        # Whole-slide JPEGs exceed Pillow's own guard (89 Mpx), so it is off; instead the
        # declared size must fit the file (a bomb is refused before decoding) and ingest
        # applies the configurable ingest.max_jpeg_png_px (check_slide_before_decoding).
        width, height = _pillow_size(path)
        check_declared_size(path, width, height, path.stat().st_size)
        try:
            with _unlimited_pixels(Image):
                with Image.open(path) as image:
                    self._pixels = np.asarray(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:  # PIL reports broken files as these
            raise InputError(path, f"cannot decode image ({err})") from err
        h, w = self._pixels.shape[:2]
        super().__init__(path, [(w, h)], [1.0], None)

    def _read_region(self, level, x0, y0, w, h):
        out = np.full((h, w, 3), WHITE, np.uint8)
        width, height = self.level_dimensions[0]
        ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
        if ax0 < ax1 and ay0 < ay1:
            out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = self._pixels[ay0:ay1, ax0:ax1]
        return out

    def _iter_strips(self, level, workers, channels_first, recycle):
        rows = 256
        for y0 in range(0, self._pixels.shape[0], rows):
            strip = self._pixels[y0 : y0 + rows]
            yield y0, _to_channels_first(strip) if channels_first else strip


@contextlib.contextmanager
def _unlimited_pixels(image_module) -> Iterator[None]:
    saved = image_module.MAX_IMAGE_PIXELS
    image_module.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        image_module.MAX_IMAGE_PIXELS = saved


def level_for_mpp(
    slide: Slide, target_mpp: float, mpp: float | None = None,
    tolerance: float = LEVEL_MPP_TOLERANCE,
) -> int:
    """The coarsest level that is still at least as fine as ``target_mpp`` (within ``tolerance``).

    Reading that level and downsampling it to the target never upsamples and decodes the
    fewest tiles. When even level 0 is coarser than the target, level 0 is returned.
    """
    best = 0
    for level in range(slide.level_count):
        level_mpp = slide.level_mpp(level, mpp)
        if level_mpp is None:
            raise InputError(slide.path, "no microns-per-pixel in the file; give the slide's mpp")
        if level_mpp <= target_mpp * (1 + tolerance):
            if level_mpp >= slide.level_mpp(best, mpp):
                best = level
    return best


BACKENDS = {"tifffile": _TiffSlide, "openslide": _OpenSlideSlide, "pillow": _PillowSlide}

__all__ = ["Slide", "open_slide", "level_for_mpp", "WHITE", "BACKENDS"]
