"""Write the store's channel-first image into its reserved bytes, band by band, off-thread.

The image is ``uint8 (3, H, W)`` with a white margin of ``m`` px on every side, at a known
byte offset of the (already created) HDF5 file, so each channel plane is one run of bytes
filled top to bottom. A background thread copies every band's channels, margins added, into
one staging buffer per plane (``(rows, w, 3)`` bands are transposed there, off the decoding
threads) and writes each full buffer with ``O_DIRECT``, past the page cache: fresh page-cache
pages cost 0.3-2 s of kernel time per GB on the build's CPUs (4 s for 1.2 GB on a VM whose
free memory goes back to its host), a direct write almost none, and the device works while
the tiles decode. The few bytes that share a block with something else (HDF5's own bytes, the
next plane) go through the page cache at the end, as everything does where the file system
refuses ``O_DIRECT`` (tmpfs) or its alignment.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pastflow.slide import WHITE

if TYPE_CHECKING:
    from pastflow.patches.store import StoreGeometry

log = logging.getLogger(__name__)

ALIGN = 4096  # O_DIRECT wants offsets, lengths and memory in multiples of the block size
STAGING_BYTES = 8 << 20  # per plane at most: one direct write
CHUNK_BYTES = 1 << 20  # band rows copied per step, so that they stay in cache for all 3 planes


class PlanarImageWriter:
    """Write bands of rows, top to bottom, into the reserved ``uint8 (3, H, W)`` image.

    Use as a context manager around :meth:`write_band` calls covering the image's rows in
    order; leaving it adds the white margins, waits for the last write and re-raises any
    error the thread met.
    """

    def __init__(self, path: str | Path, offset: int, geometry: StoreGeometry):
        self._margin = geometry.margin
        width, height = geometry.padded_size
        self._image_w, self._image_h = geometry.image_size
        self._offset, self._nbytes = offset, 3 * width * height
        # At most an eighth of a plane: a small slide's build keeps its memory small too.
        staging = min(STAGING_BYTES, width * height // 8)
        capacity = -(-max(staging, 2 * width + ALIGN) // ALIGN) * ALIGN
        self._planes = [
            _Plane(offset + c * width * height, offset + (c + 1) * width * height, width,
                   capacity, self)
            for c in range(3)
        ]
        self._fd = os.open(path, os.O_WRONLY)
        self._direct = _open_direct(path)
        self._ragged: list[tuple[int, bytes]] = []
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # bounds memory: two bands in flight
        self._error: BaseException | None = None
        self._next_row = 0
        # Bands passed with recycle=True go here once copied, for the strip reader to refill.
        self.written: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="patch-store-writer", daemon=True)

    @property
    def direct(self) -> bool:
        """Whether the pixels go to the file with ``O_DIRECT`` (so far)."""
        return self._direct is not None

    def __enter__(self) -> PlanarImageWriter:
        try:
            # Blocks allocated up front: the writes into them are faster, and on ext4 direct
            # writes then need no allocation. Where the file system cannot, writes still work.
            os.posix_fallocate(self._fd, self._offset, self._nbytes)
        except OSError:
            pass
        try:
            for plane in self._planes:
                plane.put(self._margin, None, self._margin)  # the top margin
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._queue.put(None)
            self._thread.join()
            if exc[0] is not None:
                return
            if self._error is not None:
                raise self._error
            if self._next_row != self._image_h:
                raise RuntimeError(f"bands covered {self._next_row} of {self._image_h} rows")
            for plane in self._planes:
                plane.put(self._margin, None, self._margin)  # the bottom margin
                plane.flush(final=True)
            for position, data in self._ragged:
                _pwrite_all(self._fd, memoryview(data), position)
        finally:
            self._close()

    def _close(self) -> None:
        os.close(self._fd)
        if self._direct is not None:
            os.close(self._direct)

    def write_band(
        self, y0: int, band: np.ndarray, channels_first: bool, recycle: bool = False
    ) -> None:
        """Rows ``y0 ..`` of the image (margin excluded), the next ones in order: ``(3, rows, w)``
        if ``channels_first`` else ``(rows, w, 3)``. The caller must not modify ``band``
        afterwards; with ``recycle`` it comes back on :attr:`written` once copied."""
        if self._error is not None:
            raise self._error
        if y0 != self._next_row:
            raise RuntimeError(f"band at row {y0}, expected row {self._next_row}")
        self._next_row += band.shape[1 if channels_first else 0]
        self._queue.put((band, channels_first, recycle))

    # -- the writer thread -------------------------------------------------------------------

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep consuming so that the producer never blocks
            try:
                self._put_band(*item)
            except BaseException as err:  # handed to the caller's thread
                self._error = err

    def _put_band(self, band: np.ndarray, channels_first: bool, recycle: bool) -> None:
        rows = band.shape[1 if channels_first else 0]
        step = max(1, CHUNK_BYTES // (3 * self._image_w))
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            for c, plane in enumerate(self._planes):
                part = band[c, r0:r1] if channels_first else band[r0:r1, :, c]
                plane.put(r1 - r0, part, self._margin)
        if recycle:
            self.written.put(band)

    def _write_direct(self, position: int, view: memoryview) -> None:
        """Aligned whole blocks: direct if the file system takes it, else through the cache."""
        if self._direct is not None:
            try:
                _pwrite_all(self._direct, view, position)
                return
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                log.debug("O_DIRECT refused (%s); writing through the page cache", err)
                os.close(self._direct)
                self._direct = None
        _pwrite_all(self._fd, view, position)

    def _write_ragged(self, position: int, data: bytes) -> None:
        """Bytes sharing a block with others: written through the page cache at the end."""
        self._ragged.append((position, data))


class _Plane:
    """File bytes ``[start, end)``, rows of ``width`` bytes produced top to bottom, staged in
    an aligned buffer and written out in whole blocks."""

    def __init__(self, start: int, end: int, width: int, capacity: int, sink: PlanarImageWriter):
        self.start, self.end, self.width = start, end, width
        inner = (-(-start // ALIGN) * ALIGN, end // ALIGN * ALIGN)  # whole blocks of the plane
        self._inner = inner if inner[0] < inner[1] else (end, end)
        raw = np.empty(capacity + ALIGN, np.uint8)
        skip = -raw.ctypes.data % ALIGN
        self._buffer = raw[skip : skip + capacity]
        self._position = start // ALIGN * ALIGN  # file position of _buffer[0]
        self._fill = start - self._position  # bytes staged (those before `start`: unused)
        self._sink = sink

    def put(self, n: int, rows: np.ndarray | None, margin: int) -> None:
        """Append ``n`` rows: ``rows`` ``(n, width - 2 margin)`` between white margins, or
        white if ``rows`` is None."""
        done = 0
        while done < n:
            k = min(n - done, (len(self._buffer) - self._fill) // self.width)
            if k == 0:
                self.flush()
                continue
            dst = self._buffer[self._fill : self._fill + k * self.width].reshape(k, self.width)
            if rows is None:
                dst[...] = WHITE
            else:
                dst[:, :margin] = WHITE
                dst[:, margin : self.width - margin] = rows[done : done + k]
                dst[:, self.width - margin :] = WHITE
            self._fill += k * self.width
            done += k

    def flush(self, final: bool = False) -> None:
        """Write out the whole blocks staged (everything if ``final``)."""
        end = self._position + self._fill
        cut = end if final else end // ALIGN * ALIGN
        if cut <= self._position:
            return
        inner0, inner1 = self._inner
        d0, d1 = max(self._position, inner0), min(cut, inner1)
        if d0 < d1:
            self._sink._write_direct(d0, memoryview(self._view(d0, d1)))
        for r0, r1 in ((max(self._position, self.start), min(cut, inner0)),
                       (max(self._position, inner1), cut)):
            if r0 < r1:
                self._sink._write_ragged(r0, self._view(r0, r1).tobytes())
        rest, used = end - cut, cut - self._position
        self._buffer[:rest] = self._buffer[used : used + rest].copy()
        self._position, self._fill = cut, rest

    def _view(self, a: int, b: int) -> np.ndarray:
        return self._buffer[a - self._position : b - self._position]


def _open_direct(path: str | Path) -> int | None:
    """A second descriptor with ``O_DIRECT``, or None where the platform or file system has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


def _pwrite_all(fd: int, view: memoryview, position: int) -> None:
    """``os.pwrite`` all of ``view`` at ``position`` (a short write is continued)."""
    view = view.cast("B")
    while len(view):
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written
