"""Nucleus detection on an H&E slide, tile by tile, for slides without spatial transcriptomics.

Method (classic, unsupervised, no model weights):

1. colour deconvolution (Ruifrok & Johnston, ``skimage.color.rgb2hed``) -> hematoxylin
   density, minus its local background (a white top-hat wider than any nucleus), so that
   only compact dark objects remain, whatever the stain intensity of the surroundings;
2. one threshold for the whole slide: Otsu over the tissue pixels of tiles spread over the
   slide (a per-tile Otsu would invent nuclei in nucleus-free tiles);
3. per tile: mask at 0.7 x that threshold, closed and filled (vesicular nuclei are rings of
   chromatin), one marker per peak of blurred density + distance to the mask edge, watershed
   to split touching nuclei; centroid and area of each, kept between 8 and 400 um^2.

Everything runs at the pyramid level nearest ``target_mpp`` (0.5 um/px by default; a finer
level is block-averaged down by an integer factor), over tiles with a halo wider than a nucleus
and than the background window: a nucleus is kept by the one tile whose core holds its
centroid, so none is counted twice or cut. Memory holds one tile at a time.

Measured (simulated H&E at 0.25 um/px vs the simulator's nucleus centres, one-to-one matching):
recall / precision ~0.6 / 0.6 within 1 um and ~0.75 / 0.75 within 2 um; touching nuclei in
dense tumour nests are the main misses. Tuned on simulated slides, checked by eye on CMU-1.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed
from skimage.transform import downscale_local_mean

from pastflow.errors import InputError
from pastflow.progress import progress_bar
from pastflow.slide import Slide, level_for_mpp

log = logging.getLogger(__name__)

TARGET_MPP = 0.5          # um/px the detection runs at
TILE_PX = 1024            # tile core side, in working pixels
HALO_UM = 24.0            # > largest nucleus radius (11 um) + background window (10 um)
SMOOTH_SIGMA_UM = 0.5     # denoising before thresholding
MASK_FRACTION = 0.7       # x Otsu: pale (vesicular) nuclei sit below the Otsu threshold itself
CLOSE_RADIUS_UM = 1.0     # closes rings of chromatin granules into one nucleus
OPEN_RADIUS_UM = 1.0      # removes bridges and specks thinner than ~2 um
MARKER_SIGMA_UM = 1.5     # blur that merges a nucleus' chromatin texture into one peak
DISTANCE_SCALE_UM = 4.0   # weight of the distance map in the marker relief (~ a nucleus radius)
MIN_AREA_UM2 = 8.0        # smaller: debris, granules, noise
MAX_AREA_UM2 = 400.0      # larger: folds, pen marks, clumps that would not split
PEAK_MIN_DISTANCE_UM = 3.0  # two peaks closer than this are one nucleus
MIN_THRESHOLD = 0.03      # floor of the slide threshold (rgb2hed units above background; glass ~0)
SAMPLE_TILES = 16         # tiles pooled to estimate the threshold
BACKGROUND_RADIUS_UM = 10.0  # half-side of the opening that estimates the local background
TISSUE_MAX_RGB = 215      # a pixel whose darkest channel is below this is tissue, not glass


@dataclass(frozen=True)
class DetectionGrid:
    """Where and at which resolution detection runs.

    ``level``: pyramid level read; ``factor``: integer block-average from that level to the
    working resolution; ``work_mpp``: um per working pixel; ``tile``/``halo``: core side and
    halo in *level* pixels (multiples of ``factor``); ``level_downsample``: level-0 px per level px.
    """

    level: int
    factor: int
    level_mpp: float
    work_mpp: float
    tile: int
    halo: int
    level_downsample: float
    level_width: int
    level_height: int

    def tile_origins(self) -> list[tuple[int, int]]:
        """Top-left corners ``(x0, y0)`` of every tile core, in level pixels, row by row."""
        return [(x0, y0) for y0 in range(0, self.level_height, self.tile)
                for x0 in range(0, self.level_width, self.tile)]


def plan_detection(slide: Slide, mpp: float, target_mpp: float = TARGET_MPP,
                   tile_px: int = TILE_PX) -> DetectionGrid:
    """Pick the level and integer downscale that bring the slide closest to ``target_mpp``.

    ``mpp``: microns per level-0 pixel (the file's, or the user's for JPEG/PNG).
    """
    level = level_for_mpp(slide, target_mpp, mpp)
    level_mpp = mpp * slide.level_downsamples[level]
    factor = max(1, round(target_mpp / level_mpp))
    work_mpp = level_mpp * factor
    halo = factor * math.ceil(HALO_UM / work_mpp)
    width, height = slide.level_dimensions[level]
    return DetectionGrid(level, factor, level_mpp, work_mpp, tile_px * factor, halo,
                         slide.level_downsamples[level], width, height)


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """``uint8 (h, w, 3)`` RGB -> hematoxylin density ``float32 (h, w)`` (rgb2hed units, >= 0)."""
    return np.clip(rgb2hed(rgb)[..., 0], 0, None).astype(np.float32)


def nuclear_density(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Hematoxylin density above its local background, ``float32 (h, w)``.

    A white top-hat: the density minus its grey opening by a square wider than any nucleus,
    so what remains are the compact dark objects (nuclei), while broad hematoxylin-rich areas
    (basophilic cytoplasm, mucin, a bluish stain) drop to zero instead of merging every nucleus
    into one blob.
    """
    density = hematoxylin_density(rgb)
    size = 2 * round(BACKGROUND_RADIUS_UM / mpp) + 1
    return density - ndimage.grey_opening(density, size=(size, size))


def _read_work_tile(slide: Slide, grid: DetectionGrid, x0: int, y0: int) -> np.ndarray:
    """Tile core + halo at ``(x0, y0)`` (level px), block-averaged to the working resolution."""
    side = grid.tile + 2 * grid.halo
    rgb = slide.read_region(grid.level, x0 - grid.halo, y0 - grid.halo, side, side)
    if grid.factor > 1:
        rgb = downscale_local_mean(rgb, (grid.factor, grid.factor, 1)).round().astype(np.uint8)
    return rgb


def estimate_threshold(slide: Slide, grid: DetectionGrid, n_tiles: int = SAMPLE_TILES) -> float:
    """Hematoxylin density separating nuclei from the rest of the tissue, for the whole slide.

    Otsu over the tissue pixels of up to ``n_tiles`` tiles spread evenly over the slide, with
    values clipped at their 99.5th percentile (pen marks and dust would otherwise pull the
    threshold far above every nucleus), never below :data:`MIN_THRESHOLD`.
    """
    origins = grid.tile_origins()
    picks = np.unique(np.linspace(0, len(origins) - 1, min(n_tiles, len(origins))).round().astype(int))
    pooled = []
    for i in picks:
        x0, y0 = origins[i]
        rgb = _read_work_tile(slide, grid, x0, y0)
        tissue = rgb.min(axis=-1) < TISSUE_MAX_RGB
        if tissue.sum() > 100:
            pooled.append(nuclear_density(rgb, grid.work_mpp)[tissue])
    if not pooled:
        return MIN_THRESHOLD
    values = np.concatenate(pooled)
    values = np.clip(values, 0, np.percentile(values, 99.5))
    if values.max() <= values.min():
        return MIN_THRESHOLD
    return max(MIN_THRESHOLD, float(threshold_otsu(values)))


def segment_nuclei(rgb: np.ndarray, threshold: float, mpp: float) -> np.ndarray:
    """Label image ``int32 (h, w)`` of the nuclei in ``rgb`` (0 = background), at ``mpp`` um/px.

    ``threshold``: the slide's Otsu hematoxylin density (:func:`estimate_threshold`).
    """
    density = nuclear_density(rgb, mpp)
    mask = ndimage.gaussian_filter(density, SMOOTH_SIGMA_UM / mpp) > MASK_FRACTION * threshold
    # Vesicular nuclei are rings of dark chromatin around a pale centre: close the gaps in the
    # ring, fill it, then cut the thin bridges that closing made between neighbours.
    mask = ndimage.binary_closing(mask, structure=_disk(CLOSE_RADIUS_UM / mpp))
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=_disk(OPEN_RADIUS_UM / mpp))
    components, n = ndimage.label(mask)
    if n == 0:
        return components
    # One marker per nucleus: peaks of a relief adding the blurred density (dark nuclear
    # centres, which split touching nuclei) and the distance to the mask edge (the middle of a
    # round shape, which keeps a textured nucleus whole). Either alone over- or under-splits.
    blurred = ndimage.gaussian_filter(density, MARKER_SIGMA_UM / mpp) / threshold
    relief = blurred + ndimage.distance_transform_edt(mask) * mpp / DISTANCE_SCALE_UM
    peaks = peak_local_max(relief, min_distance=max(1, round(PEAK_MIN_DISTANCE_UM / mpp)),
                           labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    return watershed(-relief, markers, mask=mask).astype(np.int32)


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx**2 + yy**2 <= r * r + 0.5


def label_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids ``(k, 2)`` ``[x, y]`` (pixel-centre convention) and areas ``(k,)`` in px of labels 1..max."""
    n = int(labels.max())
    flat = labels.ravel()
    keep = flat > 0
    ids = flat[keep]
    ys, xs = np.divmod(np.flatnonzero(keep), labels.shape[1])
    area = np.bincount(ids, minlength=n + 1)[1:].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(ids, weights=xs, minlength=n + 1)[1:] / area
        cy = np.bincount(ids, weights=ys, minlength=n + 1)[1:] / area
    present = area > 0
    return np.column_stack([cx, cy])[present], area[present]


@dataclass(frozen=True)
class NucleusTile:
    """The nuclei one tile keeps (those whose centroid lies in its core), in working pixels.

    ``labels``: ``int32 (h, w)`` over the tile core and its halo, 1..k = the kept nuclei in the
    order of ``xy`` / ``area_um2``, 0 elsewhere (a nucleus another tile keeps is 0 here).
    ``xy``: ``(k, 2)`` centroids in level-0 pixels (pixel-centre convention); ``area_um2``:
    ``(k,)``. ``origin``: level pixel of working pixel ``(0, 0)``'s block corner.
    """

    labels: np.ndarray
    xy: np.ndarray
    area_um2: np.ndarray
    origin: tuple[int, int]
    factor: int
    level_downsample: float

    def level0_to_work(self, xy: np.ndarray) -> np.ndarray:
        """``(n, 2)`` level-0 pixels -> working pixels (float, pixel-centre convention)."""
        level = (np.asarray(xy, np.float64) + 0.5) / self.level_downsample - 0.5
        return (level + 0.5 - np.asarray(self.origin)) / self.factor - 0.5

    def work_to_level0(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`level0_to_work`."""
        level = (np.asarray(xy, np.float64) + 0.5) * self.factor - 0.5 + np.asarray(self.origin)
        return (level + 0.5) * self.level_downsample - 0.5


def check_detection_area(slide: Slide, mpp: float, max_area_mm2: float | None) -> float:
    """The slide's level-0 area in mm^2; :class:`InputError` above ``max_area_mm2`` (config key
    ``ingest.max_detection_mm2``; None = no budget), before a single tile is read.

    Detection time grows with the area (every tile is read, glass included), so an absurd
    declared size or a wrong mpp would otherwise run for hours before failing or finishing.
    """
    width, height = slide.level_dimensions[0]
    area_mm2 = width * height * mpp**2 / 1e6
    if max_area_mm2 is not None and area_mm2 > max_area_mm2:
        raise InputError(slide.path, f"nucleus detection over {area_mm2:,.0f} mm^2 ({width} x "
                                     f"{height} px at {mpp:.4g} um/px) exceeds config key "
                                     f"ingest.max_detection_mm2 = {max_area_mm2:,g} mm^2 (a 25 x "
                                     "75 mm glass slide is 1,875 mm^2): check the slide's size "
                                     "and resolution (mpp), or raise the key")
    return area_mm2


def iter_nucleus_tiles(slide: Slide, mpp: float, *, target_mpp: float = TARGET_MPP,
                       tile_px: int = TILE_PX, progress: bool = True,
                       max_area_mm2: float | None = None) -> Iterator[NucleusTile]:
    """Segment the whole slide tile by tile; yield each tile's kept nuclei (:class:`NucleusTile`).

    Tiles come row by row; glass-only tiles are skipped. Every nucleus is kept by exactly one
    tile, whole (the halo is wider than any nucleus), with area between
    :data:`MIN_AREA_UM2` and :data:`MAX_AREA_UM2`. Memory holds one tile at a time.

    Raises:
        InputError: the slide has no usable resolution, or is larger than ``max_area_mm2``
            (:func:`check_detection_area`).
    """
    if not mpp or not math.isfinite(mpp) or mpp <= 0:
        raise InputError(slide.path, "nucleus detection needs the slide's microns per pixel; give "
                                     "it in the sample sheet column mpp or the config key ingest.mpp")
    check_detection_area(slide, mpp, max_area_mm2)
    grid = plan_detection(slide, mpp, target_mpp, tile_px)
    threshold = estimate_threshold(slide, grid)
    log.info("%s: detecting nuclei on level %d (%.3f um/px, /%d -> %.3f um/px), %d tiles, "
             "hematoxylin threshold %.3f", slide.path.name, grid.level, grid.level_mpp, grid.factor,
             grid.work_mpp, len(grid.tile_origins()), threshold)
    min_area = MIN_AREA_UM2 / grid.work_mpp**2
    max_area = MAX_AREA_UM2 / grid.work_mpp**2
    halo_work = grid.halo // grid.factor
    core_work = grid.tile // grid.factor
    for x0, y0 in progress_bar(grid.tile_origins(), desc=f"nuclei {slide.path.name}", unit="tile",
                               enabled=progress):
        rgb = _read_work_tile(slide, grid, x0, y0)
        if rgb.min() >= TISSUE_MAX_RGB:
            continue  # glass only
        labels = segment_nuclei(rgb, threshold, grid.work_mpp)
        ids, xy, area = _label_stats(labels)
        # Only the tile whose core holds the centroid keeps the nucleus.
        core = ((xy[:, 0] >= halo_work - 0.5) & (xy[:, 0] < halo_work + core_work - 0.5)
                & (xy[:, 1] >= halo_work - 0.5) & (xy[:, 1] < halo_work + core_work - 0.5))
        ok = core & (area >= min_area) & (area <= max_area)
        renumber = np.zeros(int(labels.max()) + 1, np.int32)
        renumber[ids[ok]] = np.arange(1, int(ok.sum()) + 1)
        tile = NucleusTile(renumber[labels], np.zeros((0, 2)), area[ok] * grid.work_mpp**2,
                           (x0 - grid.halo, y0 - grid.halo), grid.factor, grid.level_downsample)
        yield dataclasses.replace(tile, xy=tile.work_to_level0(xy[ok]))


def _label_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids, centroids and areas of the labels present, as :func:`label_centroids` orders them."""
    xy, area = label_centroids(labels)
    counts = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)[1:]
    return np.flatnonzero(counts) + 1, xy, area


def detect_nuclei(slide: Slide, mpp: float, *, target_mpp: float = TARGET_MPP, tile_px: int = TILE_PX,
                  progress: bool = True, max_area_mm2: float | None = None) -> pd.DataFrame:
    """Find nuclei on the whole slide.

    Args:
        slide: an open slide (:func:`pastflow.slide.open_slide`).
        mpp: microns per level-0 pixel.
        target_mpp: working resolution (the nearest level is used, block-averaged to it).
        tile_px: tile core side in working pixels (memory ~ 40 bytes x (tile_px + halo)^2).
        max_area_mm2: refuse a larger slide up-front (:func:`check_detection_area`).

    Returns:
        DataFrame, one row per nucleus: ``x_px, y_px`` (centroid in level-0 pixels, pixel-centre
        convention) and ``area_um2``, ordered top to bottom by tile then by label.

    Raises:
        InputError: the slide has no usable resolution, or is too large.
    """
    found_xy, found_area = [], []
    for tile in iter_nucleus_tiles(slide, mpp, target_mpp=target_mpp, tile_px=tile_px,
                                   progress=progress, max_area_mm2=max_area_mm2):
        found_xy.append(tile.xy)
        found_area.append(tile.area_um2)
    xy = np.concatenate(found_xy) if found_xy else np.zeros((0, 2))
    area = np.concatenate(found_area) if found_area else np.zeros(0)
    return pd.DataFrame({"x_px": xy[:, 0], "y_px": xy[:, 1], "area_um2": area})
