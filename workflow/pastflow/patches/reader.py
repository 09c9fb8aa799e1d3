"""Random access to the patches of a store (see :func:`pastflow.patches.store.build_patch_store`).

``PatchStore(path)[i]`` is cell ``i``'s patch, ``uint8 (3, h, w)``, cropped from a read-only
memory map of the store's ``/image`` (no HDF5 call, no decoding, no lock), so any number of
threads or DataLoader worker processes read concurrently. Nothing is opened until the first
read; a pickled store (as sent to spawned workers) carries only its path and reopens in the
worker; a forked worker shares the parent's read-only map, which is safe.

A batch of patches is copied by a few threads at once (numpy's copies release the GIL, and a
copy waits on memory more than it computes): up to :data:`READ_THREADS`, within the job's
CPUs, in the process that created the store. A copy in another process (a data loader's
worker, forked or sent) reads on one thread: there the processes are the parallelism.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pastflow.atomic import atomic_path
from pastflow.errors import InputError
from pastflow.job_cpus import job_cpus

log = logging.getLogger(__name__)

READ_FORMAT_VERSION = 1
READ_THREADS = 4  # at most, per read
MIN_PATCHES_PER_THREAD = 16  # below that, handing patches to a thread costs more than it saves


@dataclass(frozen=True)
class _Opened:
    """What a process holds once it has opened a store."""

    attrs: dict
    cell_ids: np.ndarray
    centers: np.ndarray
    xy_level0: np.ndarray
    in_slide: np.ndarray
    in_tissue: np.ndarray
    image: np.ndarray
    corners: dict = field(default_factory=dict)  # patch size -> (top rows, left columns)


class PatchStore:
    """A patch store opened for reading; torch-free, cheap to pickle.

    Everything below is loaded on first use: ``cell_ids`` (str ``(n,)``), ``centers``
    (``(n, 2)`` ``[x, y]`` in store pixels), ``xy_level0`` (in slide level-0 pixels of
    ``slide_mpp`` um), ``in_tissue``, ``in_slide``, ``mpp`` (um/px of the patches),
    ``patch_px``, ``context_px`` (0 = none), ``margin``, ``attrs`` (all root attributes) and
    ``image``.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        """``threads``: copying a batch (default: see the module's docstring)."""
        self.path = Path(path)
        self._opened: _Opened | None = None
        self._threads = threads
        self._job_threads: int | None = None
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"path": self.path}  # the worker that unpickles it opens its own map

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], threads=1)

    def __repr__(self) -> str:
        return f"PatchStore({str(self.path)!r})"

    # -- opening -----------------------------------------------------------------------------

    @property
    def _store(self) -> _Opened:
        if self._opened is None:
            self._opened = _open(self.path)
        return self._opened

    @property
    def attrs(self) -> dict:
        return self._store.attrs

    @property
    def cell_ids(self) -> np.ndarray:
        return self._store.cell_ids

    @property
    def centers(self) -> np.ndarray:
        return self._store.centers

    @property
    def xy_level0(self) -> np.ndarray:
        return self._store.xy_level0

    @property
    def in_slide(self) -> np.ndarray:
        return self._store.in_slide

    @property
    def in_tissue(self) -> np.ndarray:
        return self._store.in_tissue

    @property
    def mpp(self) -> float:
        return float(self.attrs["mpp"])

    @property
    def slide_mpp(self) -> float:
        """Microns per slide level-0 pixel: the unit of ``xy_level0`` (every store has it)."""
        return float(self.attrs["slide_mpp"])

    @property
    def patch_px(self) -> int:
        return int(self.attrs["patch_px"])

    @property
    def unit(self) -> str:
        """What a row is: ``"cell"`` or ``"spot"`` (stores written before units: cell)."""
        return str(self.attrs.get("unit", "cell"))

    @property
    def context_px(self) -> int:
        return int(self.attrs["context_px"])

    @property
    def margin(self) -> int:
        return int(self.attrs["margin"])

    @property
    def image(self) -> np.ndarray:
        """The whole resampled slide with its white margin: read-only ``uint8 (3, H, W)``."""
        return self._store.image

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.cell_ids)

    def __getitem__(self, index: int) -> np.ndarray:
        """Patch of cell ``index``: ``uint8 (3, patch_px, patch_px)``."""
        ys, xs = self._corners_for(self.patch_px)
        y, x, size = ys[index], xs[index], self.patch_px
        return np.array(self.image[:, y : y + size, x : x + size])

    def read(
        self,
        indices: Sequence[int] | np.ndarray,
        size: int | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Patches of cells ``indices`` (any order, repeats allowed): ``uint8 (n, 3, s, s)``.

        ``size`` defaults to the store's ``patch_px``; any size up to twice the margin works
        (same resolution, same centre). ``out`` is an optional preallocated array to fill.
        """
        size = self.patch_px if size is None else int(size)
        ys, xs = self._corners_for(size)
        indices = np.asarray(indices, dtype=np.int64)
        ys, xs = ys[indices].tolist(), xs[indices].tolist()  # Python ints: faster slicing
        if out is None:
            out = np.empty((len(indices), 3, size, size), np.uint8)
        image = self.image
        threads = min(self._read_threads(), len(indices) // MIN_PATCHES_PER_THREAD)
        if threads > 1:
            _crop_shared(image, ys, xs, size, out, threads)
            return out
        for k, (y, x) in enumerate(zip(ys, xs)):
            out[k] = image[:, y : y + size, x : x + size]
        return out

    def read_context(
        self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Context patches of cells ``indices``: ``uint8 (n, 3, context_px, context_px)``."""
        if not self.context_px:
            raise ValueError(f"{self.path}: the store was built without context patches")
        return self.read(indices, size=self.context_px, out=out)

    def index_of(self, cell_ids: Sequence[str]) -> np.ndarray:
        """Row indices of ``cell_ids`` -> ``int64 (n,)``; KeyError naming the first unknown id."""
        lookup = {cid: i for i, cid in enumerate(self.cell_ids)}
        try:
            return np.fromiter((lookup[str(c)] for c in cell_ids), np.int64, count=len(cell_ids))
        except KeyError as err:
            raise KeyError(f"{self.path}: no cell {err.args[0]!r}") from None

    def tissue(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``(thumbnail uint8 (h, w, 3), mask bool (h, w), downsample)`` of the store's image."""
        import h5py

        with h5py.File(self.path, "r") as f:
            return (
                f["tissue/thumbnail"][:],
                f["tissue/mask"][:],
                int(f["tissue"].attrs["downsample"]),
            )

    def _read_threads(self) -> int:
        if self._threads is not None:
            return self._threads
        if os.getpid() != self._pid:  # a forked worker, whenever it was forked
            return 1
        if self._job_threads is None:
            self._job_threads = min(READ_THREADS, job_cpus())
        return self._job_threads

    def _corners_for(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left ``(y, x)`` of every cell's ``size`` px crop, cached per size."""
        corners = self._store.corners
        if size not in corners:
            if not 1 <= size <= 2 * (self.margin - 1):
                raise ValueError(
                    f"{self.path}: patches of {size} px do not fit the store's "
                    f"{self.margin} px margin (at most {2 * (self.margin - 1)} px)"
                )
            # The crop's centre pixel, (size - 1) / 2, lands on the cell's centre, rounded.
            corner = np.floor(self.centers - (size - 1) / 2 + 0.5).astype(np.int64)
            corners[size] = (corner[:, 1], corner[:, 0])
        return corners[size]


def _crop_shared(image: np.ndarray, ys: list, xs: list, size: int, out: np.ndarray,
                 threads: int) -> None:
    """``out[k] = image[:, ys[k]:+size, xs[k]:+size]`` by this thread and ``threads - 1``
    helpers, taking patches one at a time from a shared counter: on a busy machine, a helper
    the OS has paused holds up one patch, not a share of the batch."""
    counter, n = itertools.count(), len(ys)

    def work() -> None:
        while (k := next(counter)) < n:  # next() on a count is atomic under the GIL
            y, x = ys[k], xs[k]
            out[k] = image[:, y : y + size, x : x + size]

    helpers = [_helper_pool().submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:  # no helper may still write into `out` once this returns
        for helper in helpers:
            if not helper.cancel():  # one that never started has nothing left to do
                helper.result()


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _helper_pool() -> ThreadPoolExecutor:
    """This process's reading helpers (a forked child starts its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(READ_THREADS - 1, "patch-store-read"))
    return _POOL[1]


def _open(path: Path) -> _Opened:
    """Read the index and memory-map ``/image`` (HDF5 is closed again before returning)."""
    import h5py

    if not path.is_file():
        raise InputError(path, "patch store not found")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            version = int(attrs.get("format_version", -1))
            if version != READ_FORMAT_VERSION:
                raise InputError(
                    path,
                    f"patch store format version {version}; this pastflow reads "
                    f"{READ_FORMAT_VERSION}",
                )
            offset, shape = f["image"].id.get_offset(), f["image"].shape
            cells = f["cells"]
            arrays = {
                name: cells[name][:] for name in ("center", "xy_level0", "in_slide", "in_tissue")
            }
            cell_ids = np.asarray(cells["cell_id"].asstr()[:], dtype=object)
    except InputError:
        raise
    except (OSError, KeyError) as err:
        raise InputError(path, f"not a readable patch store ({err})") from err
    if offset is None:
        raise InputError(path, "/image is not stored contiguously (repacked?); rebuild the store")
    image = _map_image(path, offset, shape)
    log.debug("%s: %d cells, image %s mapped at byte %d", path, len(cell_ids), shape, offset)
    return _Opened(
        attrs=attrs,
        cell_ids=cell_ids,
        centers=arrays["center"],
        xy_level0=arrays["xy_level0"],
        in_slide=arrays["in_slide"],
        in_tissue=arrays["in_tissue"],
        image=image,
    )


def _map_image(path: Path, offset: int, shape: tuple) -> np.ndarray:
    """``/image`` as a read-only ``uint8`` array over a memory map of the file (a plain ndarray:
    slicing an np.memmap builds a memmap object per slice, slower).

    The map asks for huge pages: a patch is 3 x h rows a plane's width apart, so with 4 KB
    pages every row of it costs a TLB miss, and random reads run 1.6x slower (measured on
    the benchmark store). The kernel then also reads the file into the page cache in 2 MB
    blocks (a store written with O_DIRECT is not in it yet), where one 4 KB fault would read
    ~128 KB.
    """
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), offset + int(np.prod(shape)) - start,
                           access=mmap.ACCESS_READ, offset=start)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        try:
            mapped.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages
            pass
    return np.frombuffer(mapped, np.uint8, int(np.prod(shape)), offset - start).reshape(shape)


def export_patches(
    store: PatchStore, indices: Sequence[int] | np.ndarray | None = None, size: int | None = None
) -> np.ndarray:
    """The literal ``uint8 [n, 3, h, w]`` array of patches (all cells by default), in memory."""
    indices = np.arange(len(store)) if indices is None else np.asarray(indices)
    return store.read(indices, size=size)


def export_patches_h5(
    store: PatchStore,
    out_path: str | Path,
    indices: Sequence[int] | np.ndarray | None = None,
    size: int | None = None,
    batch: int = 1024,
) -> Path:
    """Write the literal layout to HDF5: ``/patches`` ``uint8 [n, 3, h, w]`` (one chunk per patch)
    and ``/cell_ids``, with the store's ``mpp``; atomically. Mind the size: ``3 h w`` bytes a cell.
    """
    import h5py

    from pastflow.progress import progress_bar

    indices = np.arange(len(store)) if indices is None else np.asarray(indices, np.int64)
    size = store.patch_px if size is None else int(size)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(mpp=store.mpp, patch_px=size, source_store=str(store.path.resolve()))
        f.create_dataset(
            "cell_ids", data=store.cell_ids[indices].astype(str).tolist(), dtype=h5py.string_dtype()
        )
        patches = f.create_dataset(
            "patches",
            shape=(len(indices), 3, size, size),
            dtype=np.uint8,
            chunks=(1, 3, size, size),
        )
        buffer = np.empty((batch, 3, size, size), np.uint8)
        for start in progress_bar(range(0, len(indices), batch), desc="export patches",
                                  unit="batch"):
            part = indices[start : start + batch]
            patches[start : start + len(part)] = store.read(
                part, size=size, out=buffer[: len(part)]
            )
    return out_path
