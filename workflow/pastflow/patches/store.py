"""Build a sample's patch store: the slide resampled once to the patch resolution + the cell index.

Why not the literal ``uint8 [n, 3, h, w]`` array that DESIGN.md describes: neighbouring cells'
patches overlap almost entirely (a 224 px patch at 0.5 um/px is 112 um wide; cells are ~10 um
apart), so writing one patch per cell stores every pixel hundreds of times: 150 KB per cell,
75 GB for 500,000 cells. The store instead keeps the slide resampled to the target resolution
once (a 40,000^2 px slide at 0.25 um/px is 1.2 GB at 0.5 um/px, ~2.5 KB per cell) with the
cell index beside it, and :class:`pastflow.patches.reader.PatchStore` crops any cell's patch
at read time with plain numpy slicing of a memory map (tens of thousands of patches per second).
The literal layout is one call away: :func:`pastflow.patches.reader.export_patches` (in memory)
and :func:`pastflow.patches.reader.export_patches_h5` (a chunked ``[n, 3, h, w]`` HDF5 file).

File layout (HDF5, ``FORMAT_VERSION`` 1):

- ``/image``: ``uint8 (3, H, W)``, the resampled slide, channel-first so that a patch is
  ``3 x h`` runs of ``w`` contiguous bytes and reads need no transpose (2.3x faster than
  ``(H, W, 3)`` plus a transpose, measured). CONTIGUOUS layout (no chunks, no compression) so
  the reader can memory-map it at ``dset.id.get_offset()``. A white margin of ``margin`` px
  surrounds the slide on every side, so every patch of every cell is in bounds and edge
  cells come out padded with white.
- ``/cells/cell_id`` (fixed-length UTF-8 str), ``/cells/center`` (``float64 (n, 2)``,
  ``[x, y]`` in ``/image`` pixels), ``/cells/xy_level0`` (``float64 (n, 2)``, the input, in
  slide level-0 pixels), ``/cells/in_slide`` and ``/cells/in_tissue`` (``bool (n,)``).
- ``/tissue/thumbnail`` (``uint8 (h, w, 3)``) and ``/tissue/mask`` (``bool (h, w)``), the
  resampled slide reduced by the attribute ``downsample``.
- Root attributes: ``format_version``, ``mpp`` (of ``/image``), ``target_mpp``, ``patch_px``,
  ``patch_um`` (``patch_px x mpp``, the patch side in microns), ``context_px`` (0 = none),
  ``margin``, ``source_slide``, ``slide_backend``, ``slide_mpp``, ``level``, ``level_mpp``,
  ``resampled``, ``unit`` (cell or spot) and ``unit_diameter_um``. ``mpp`` and ``patch_um``
  are the resolution contract: a model records the same two (``model.mpp``,
  ``model.patch_um``) and embed refuses a store that differs from them by more than
  :data:`pastflow.contracts.MPP_TOLERANCE`. A spot store's patch is the whole spot plus
  context, and models read it whole (:func:`pastflow.resolution.crop_px`).

Coordinates: pixel centres sit at integer coordinates (array-index convention), so level-0
``x`` maps to ``(x + 0.5) * scale - 0.5`` in a level ``scale`` times as large.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pastflow.atomic import atomic_path
from pastflow.contracts import LEVEL_MPP_TOLERANCE, MPP_TOLERANCE
from pastflow.errors import InputError
from pastflow.job_cpus import job_cpus
from pastflow.patches.planar_writer import PlanarImageWriter
from pastflow.patches.resample import resample_strips
from pastflow.patches.tissue import THUMBNAIL_UM, ThumbnailBuilder, flag_in_tissue, tissue_mask
from pastflow.slide import Slide, level_for_mpp, open_slide

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StoreGeometry:
    """Where the store's image comes from and how big it is. Sizes are ``(width, height)``."""

    slide_mpp: float  # um per slide level-0 pixel
    level: int  # pyramid level read
    level_size: tuple[int, int]
    level_mpp: float
    image_size: tuple[int, int]  # the level resampled to the store resolution, margin excluded
    mpp: float  # um per store pixel (= level_mpp when not resampled)
    patch_px: int
    context_px: int  # 0 = no context patches
    margin: int  # white pixels around the image on every side

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.image_size[0] + 2 * self.margin, self.image_size[1] + 2 * self.margin

    @property
    def resampled(self) -> bool:
        return self.image_size != self.level_size


@dataclass(frozen=True)
class PatchStoreStats:
    """What :func:`build_patch_store` wrote and how long it took."""

    path: str
    n_cells: int
    n_outside_slide: int
    n_tissue_free: int
    store_bytes: int
    bytes_per_cell: float
    seconds: float
    level: int
    level_mpp: float
    mpp: float
    patch_px: int
    context_px: int
    image_size: tuple[int, int]

    def summary(self) -> str:
        raw = 3 * self.patch_px**2
        return (
            f"{self.n_cells} cells -> {self.path}: {self.store_bytes / 1e6:.1f} MB, "
            f"{self.bytes_per_cell:.0f} bytes/cell ({raw} for one raw {self.patch_px} px patch); "
            f"level {self.level} at {self.level_mpp:.4f} um/px -> {self.mpp:.4f} um/px, "
            f"image {self.image_size[0]}x{self.image_size[1]} px; "
            f"{self.n_tissue_free} tissue-free, {self.n_outside_slide} outside the slide; "
            f"{self.seconds:.1f} s"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def build_patch_store(
    slide_path: str | Path,
    cell_ids: Sequence[str],
    xy_px: np.ndarray,
    out_path: str | Path,
    *,
    target_mpp: float = 0.5,
    patch_px: int | None = None,
    patch_um: float | None = None,
    context_px: int | None = None,
    context_um: float | None = None,
    slide_mpp: float | None = None,
    cells_path: str | Path | None = None,
    unit: str = "cell",
    unit_diameter_um: float | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PatchStoreStats:
    """Write the patch store of one slide to ``out_path`` (HDF5, atomically).

    Args:
        slide_path: the H&E (any format :func:`pastflow.slide.open_slide` reads).
        cell_ids: ``n`` unique ids, in the order the store will keep.
        xy_px: ``float (n, 2)`` cell (or spot) centres ``[x, y]`` in slide level-0 pixels.
        out_path: the ``.h5`` file to write.
        target_mpp: microns per pixel of the patches.
        patch_px: patch side in pixels at ``target_mpp``; or give ``patch_um`` (microns)
            (one of them is required).
        context_px: side of an optional larger context patch around each cell, same resolution;
            or give ``context_um`` (microns).
        slide_mpp: microns per level-0 pixel; overrides the file's own (needed for JPEG/PNG).
        cells_path: the file the cells came from, named in error messages.
        unit, unit_diameter_um: what a row measures (:data:`pastflow.contracts.UNITS`) and its
            diameter, recorded for the models that read the store.
        workers: threads decoding tiles (default: :func:`default_workers`).
        progress: show progress over the strips (:func:`pastflow.progress.progress_bar`).

    Returns:
        :class:`PatchStoreStats`, including ``bytes_per_cell``.

    Raises:
        InputError: no cells, bad coordinates, duplicate ids, every cell outside the slide,
            no mpp in the slide and none given, or an unreadable slide. Nothing is written.
    """
    start = time.perf_counter()
    cells_source = cells_path if cells_path is not None else slide_path
    cell_ids, xy = _check_cells(cell_ids, xy_px, cells_source)
    if workers is None:
        workers = default_workers()
    with open_slide(slide_path) as slide:
        geometry = plan_store(
            slide,
            target_mpp,
            slide_mpp=slide_mpp,
            patch_px=patch_px,
            patch_um=patch_um,
            context_px=context_px,
            context_um=context_um,
        )
        centers, in_slide = map_cells(xy, slide.level_dimensions[0], geometry)
        if not in_slide.any():
            w0, h0 = slide.level_dimensions[0]
            raise InputError(
                cells_source,
                f"none of the {len(xy)} cells lies inside the slide "
                f"{slide.path} ({w0} x {h0} px at level 0)",
            )
        if not in_slide.all():
            log.warning(
                "%s: %d of %d cells lie outside the slide; their patches are white and "
                "they are flagged in_slide=False",
                cells_source,
                (~in_slide).sum(),
                len(xy),
            )
        log.info(
            "%s: level %d (%.4f um/px, %dx%d px) -> %dx%d px at %.4f um/px",
            slide.path,
            geometry.level,
            geometry.level_mpp,
            *geometry.level_size,
            *geometry.image_size,
            geometry.mpp,
        )
        out_path = Path(out_path)
        check_free_space(out_path, geometry, len(cell_ids))
        with atomic_path(out_path) as tmp:
            unit_attrs = {"unit": unit, "unit_diameter_um": float(unit_diameter_um or 0.0)}
            image_offset = _create_layout(
                tmp, slide, geometry, target_mpp, cell_ids, xy, centers, in_slide, unit_attrs
            )
            thumbnail, factor = _write_image(tmp, image_offset, slide, geometry, workers, progress)
            mask = tissue_mask(thumbnail, geometry.mpp * factor)
            in_tissue = in_slide & flag_in_tissue(mask, centers - geometry.margin, factor)
            _write_tissue(tmp, thumbnail, mask, factor, in_tissue)
    if not in_tissue.any():
        # Still a valid store (expression-only uses need no image), but worth a loud line.
        log.warning(
            "%s: no tissue found on the slide %s: all %d cells are flagged in_tissue=False "
            "(blank, placeholder or out-of-focus image?)",
            cells_source,
            slide_path,
            len(cell_ids),
        )
    store_bytes = out_path.stat().st_size
    stats = PatchStoreStats(
        path=str(out_path),
        n_cells=len(cell_ids),
        n_outside_slide=int((~in_slide).sum()),
        n_tissue_free=int((~in_tissue).sum()),
        store_bytes=store_bytes,
        bytes_per_cell=store_bytes / len(cell_ids),
        seconds=time.perf_counter() - start,
        level=geometry.level,
        level_mpp=geometry.level_mpp,
        mpp=geometry.mpp,
        patch_px=geometry.patch_px,
        context_px=geometry.context_px,
        image_size=geometry.image_size,
    )
    log.info("%s", stats.summary())
    return stats


def store_bytes_estimate(geometry: StoreGeometry, n_cells: int) -> int:
    """Bytes the store will take: its uncompressed image (margin included), the cell table
    (ids, centres, flags: ~100 bytes a cell) and the tissue thumbnail (small)."""
    width, height = geometry.padded_size
    return 3 * width * height + 100 * n_cells + (1 << 20)


def check_free_space(out_path: Path, geometry: StoreGeometry, n_cells: int) -> None:
    """Refuse a store larger than the free space of its disk, with the true reason, before
    writing (the write would otherwise fail midway with a bare "No space left on device")."""
    import shutil

    need = store_bytes_estimate(geometry, n_cells)
    folder = out_path.parent
    while not folder.exists() and folder != folder.parent:  # atomic_path creates it
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        width, height = geometry.padded_size
        raise InputError(
            out_path,
            f"the patch store needs {need / 1e9:,.1f} GB (a {width:,} x {height:,} px RGB "
            f"image at {geometry.mpp:.3g} um/px, {geometry.margin:,} px margin for "
            f"{max(geometry.patch_px, geometry.context_px):,} px patches) but {folder} has "
            f"{free / 1e9:,.1f} GB free; free space, or check patches.mpp, patches.patch_um "
            "and patches.context_um",
        )


def default_workers() -> int:
    """Decoding threads: one per CPU of the job (:func:`pastflow.job_cpus.job_cpus`) but one,
    left to the writer thread, at most 4. The writer transposes a fifth as long as the tiles
    take to decode (its direct writes wait on the device, not the CPU); measured on 2 busy
    CPUs, a second decoding thread made builds slower (1.65-1.95x decode-only, not 1.43-1.65x)."""
    return max(1, min(4, job_cpus() - 1))


def plan_store(
    slide: Slide,
    target_mpp: float,
    *,
    slide_mpp: float | None = None,
    patch_px: int | None = None,
    patch_um: float | None = None,
    context_px: int | None = None,
    context_um: float | None = None,
) -> StoreGeometry:
    """Choose the pyramid level to read and the size of the store's image."""
    if not target_mpp > 0:
        raise ValueError(f"target_mpp must be > 0, got {target_mpp}")
    if patch_px is not None and patch_um is not None:
        raise ValueError("give patch_px or patch_um, not both")
    if context_px is not None and context_um is not None:
        raise ValueError("give context_px or context_um, not both")
    mpp0 = slide_mpp if slide_mpp is not None else slide.mpp
    if mpp0 is None:
        raise InputError(
            slide.path, "no microns-per-pixel in the file and none given " "(set the sample's mpp)"
        )
    given, recorded = slide_mpp, slide.mpp
    if given is not None and recorded is not None and abs(given / recorded - 1) > MPP_TOLERANCE:
        log.warning(
            "%s: using the given %.4f um/px, the file says %.4f", slide.path, slide_mpp, slide.mpp
        )
    level = level_for_mpp(slide, target_mpp, mpp0, tolerance=LEVEL_MPP_TOLERANCE)
    level_mpp = slide.level_mpp(level, mpp0)
    level_w, level_h = slide.level_dimensions[level]
    if abs(level_mpp / target_mpp - 1) <= LEVEL_MPP_TOLERANCE:
        image_w, image_h, mpp = level_w, level_h, level_mpp
    else:
        if level_mpp > target_mpp:
            log.warning(
                "%s: the finest level (%.4f um/px) is coarser than the target %.4f um/px; "
                "upsampling",
                slide.path,
                level_mpp,
                target_mpp,
            )
        scale = level_mpp / target_mpp
        image_w, image_h = max(1, round(level_w * scale)), max(1, round(level_h * scale))
        mpp = level_mpp * (level_w / image_w + level_h / image_h) / 2
    if patch_um is not None:
        patch_px = round(patch_um / mpp)
    if patch_px is None:
        raise ValueError("give patch_px or patch_um")
    patch_px = int(patch_px)
    if context_um:
        context_px = round(context_um / mpp)
    context_px = int(context_px or 0)
    if patch_px < 1:
        raise ValueError(f"patch size must be >= 1 px, got {patch_px}")
    if context_px and context_px < patch_px:
        raise ValueError(
            f"context patch ({context_px} px) must be larger than the patch ({patch_px} px)"
        )
    margin = math.ceil(max(patch_px, context_px) / 2) + 1
    return StoreGeometry(
        slide_mpp=mpp0,
        level=level,
        level_size=(level_w, level_h),
        level_mpp=level_mpp,
        image_size=(image_w, image_h),
        mpp=mpp,
        patch_px=patch_px,
        context_px=context_px,
        margin=margin,
    )


def map_cells(
    xy_level0: np.ndarray, level0_size: tuple[int, int], geometry: StoreGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 centres ``(n, 2)`` -> store-image centres ``(n, 2)`` and ``in_slide`` ``bool (n,)``.

    Centres outside the slide are moved to its nearest edge, so that their crops stay inside
    the margin (they read mostly white).
    """
    size0 = np.asarray(level0_size, np.float64)
    image = np.asarray(geometry.image_size, np.float64)
    in_slide = np.all((xy_level0 >= -0.5) & (xy_level0 < size0 - 0.5), axis=1)
    centers = (xy_level0 + 0.5) * (image / size0) - 0.5
    centers = np.clip(centers, -0.5, image - 0.5) + geometry.margin  # the slide's own extent
    return centers, in_slide


def _check_cells(cell_ids, xy_px, source) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(cell ids as UTF-8 bytes (n,), xy float64 (n, 2))``."""
    # Bytes: stored as one fixed-length UTF-8 column, ~70x faster to write than vlen strings.
    ids = np.array([str(c).encode() for c in cell_ids], dtype=bytes)
    xy = np.asarray(xy_px, dtype=np.float64)
    if len(ids) == 0:
        raise InputError(source, "no cells to cut patches for")
    if xy.ndim != 2 or xy.shape != (len(ids), 2):
        raise InputError(
            source,
            f"{len(ids)} cell ids but coordinates of shape {xy.shape} "
            f"(expected ({len(ids)}, 2))",
        )
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise InputError(
            source,
            f"{bad.sum()} cells have missing or infinite coordinates "
            f"(first: {ids[bad][0].decode()!r})",
        )
    ordered = np.sort(ids)  # a sort finds repeats 6x faster than a set of 500,000 ids
    if (ordered[1:] == ordered[:-1]).any():
        unique, counts = np.unique(ids, return_counts=True)
        raise InputError(
            source,
            f"{(counts > 1).sum()} cell ids occur more than once "
            f"(first: {unique[counts > 1][0].decode()!r})",
        )
    return ids, xy


def _create_layout(
    path: Path,
    slide: Slide,
    geometry: StoreGeometry,
    target_mpp: float,
    cell_ids,
    xy,
    centers,
    in_slide,
    unit_attrs: dict,
) -> int:
    """Write the index and attributes and reserve ``/image``; returns its byte offset."""
    import h5py

    width, height = geometry.padded_size
    with h5py.File(path, "w") as f:
        f.attrs.update(
            format_version=FORMAT_VERSION,
            mpp=geometry.mpp,
            target_mpp=target_mpp,
            patch_px=geometry.patch_px,
            patch_um=geometry.patch_px * geometry.mpp,
            context_px=geometry.context_px,
            margin=geometry.margin,
            source_slide=str(slide.path.resolve()),
            slide_backend=slide.backend,
            slide_mpp=geometry.slide_mpp,
            level=geometry.level,
            level_mpp=geometry.level_mpp,
            resampled=geometry.resampled,
            **unit_attrs,
        )
        cells = f.create_group("cells")
        cells.create_dataset(
            "cell_id", data=cell_ids.astype(h5py.string_dtype("utf-8", cell_ids.itemsize))
        )
        cells.create_dataset("center", data=centers)
        cells.create_dataset("xy_level0", data=xy)
        cells.create_dataset("in_slide", data=in_slide)
        # Space reserved now, contiguous, never filled by HDF5: the pixels are written at its
        # offset by PlanarImageWriter, band by band (h5py would copy each band through its own
        # buffers; a writable memory map would count 1 GB of file pages as our memory).
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        image = f.create_dataset("image", shape=(3, height, width), dtype=np.uint8, dcpl=dcpl)
        image.attrs["layout"] = "CHW"
        offset = image.id.get_offset()
    if offset is None:
        raise RuntimeError(f"{path}: HDF5 did not allocate /image")
    return int(offset)


def _write_image(
    path: Path, offset: int, slide: Slide, geometry: StoreGeometry, workers: int, progress: bool
) -> tuple[np.ndarray, int]:
    """Stream the level into ``/image``; returns the tissue thumbnail and its downsample factor."""
    from pastflow.progress import progress_bar

    factor = max(1, round(THUMBNAIL_UM / geometry.mpp))
    thumbnail = ThumbnailBuilder(*geometry.image_size, factor)
    # Strips read straight from the level come back to be refilled once copied (fresh memory
    # costs page faults); resampled bands are Pillow's own. Strips are (rows, w, 3): pasting
    # tiles into them is cheap, and the writer thread transposes them into the planes.
    recycle = not geometry.resampled
    with (
        PlanarImageWriter(path, offset, geometry) as writer,
        progress_bar(
            total=geometry.level_size[1],
            unit="row",
            desc=f"patches {slide.path.name}",
            enabled=progress,
        ) as bar,
    ):

        def counted(strips):
            for y0, strip in strips:
                yield y0, strip
                bar.update(strip.shape[0])

        strips = counted(
            slide.iter_strips(
                geometry.level, workers=workers, recycle=writer.written if recycle else None
            )
        )
        if geometry.resampled:
            strips = resample_strips(strips, geometry.level_size, geometry.image_size)
        for y0, band in strips:
            # Before the writer has it: once written, a strip may be refilled by the reader.
            thumbnail.add(y0, band)
            writer.write_band(y0, band, channels_first=False, recycle=recycle)
    log.debug("%s: image written %s", path, "with O_DIRECT" if writer.direct else "buffered")
    return thumbnail.result(), factor


def _write_tissue(
    path: Path, thumbnail: np.ndarray, mask: np.ndarray, factor: int, in_tissue: np.ndarray
) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        f["cells"].create_dataset("in_tissue", data=in_tissue)
        tissue = f.create_group("tissue")
        tissue.attrs["downsample"] = factor
        tissue.create_dataset("thumbnail", data=thumbnail)
        tissue.create_dataset("mask", data=mask)
