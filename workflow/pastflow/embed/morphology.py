"""Hand-crafted morphology features of H&E patches: the baseline an encoder must beat.

A learned encoder is only worth its cost if it predicts expression better than what a
pathologist's eye already measures: stain amounts, how many nuclei and how big, texture. These
features go through the same ridge probe as the encoders' embeddings (``morphology_ridge`` in
:mod:`pastflow.predict.evaluate`).

Every feature is intensive (a mean, a fraction, a density, or a texture statistic), so a spot's
larger patch gets the same features as a cell's. All of them are computed on a whole batch of
patches at once (array operations over the batch; no Python loop over patches):

- stains: HED colour deconvolution (Ruifrok & Johnston, :func:`skimage.color.rgb2hed`), optical
  density of haematoxylin (H, nuclei), eosin (E, cytoplasm and stroma) and DAB (D; no DAB in
  H&E, so this is the residual of the unmixing), mean and standard deviation over the patch,
  and of H and E over its centre (the central half of each side: the cell itself);
- nuclei: pixels with H optical density above :data:`NUCLEUS_H_THRESHOLD` (one global
  threshold for every slide: purple nuclei, RGB (120, 80, 160) to (40, 20, 80), sit at
  0.08-0.19; pink stroma and cytoplasm, (230, 150, 190) to (200, 120, 170), at 0-0.012; glass
  at 0; a pale or unusually stained slide shifts this, which the ridge probe sees as a
  feature shift, as it sees any stain difference),
  their connected components (4-connected) of at least :data:`MIN_NUCLEUS_UM2` counted as
  nuclei: the nucleus pixel fraction (whole patch and centre), nuclei per 1,000 µm², and the
  mean nucleus area in µm²;
- texture of the grey image (mean of R, G, B in [0, 1]): its mean and standard deviation, the
  gradient magnitude's mean and standard deviation (per patch pixel), and four grey-level
  co-occurrence statistics (8 grey levels, distance 1 pixel, horizontal and vertical pairs,
  symmetric, averaged over the two directions; as :func:`skimage.feature.graycoprops`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Haematoxylin optical density (``rgb2hed`` units) above which a pixel is nucleus.
NUCLEUS_H_THRESHOLD = 0.05
#: Connected nucleus pixels smaller than this (µm²) are stain specks, not nuclei.
MIN_NUCLEUS_UM2 = 4.0
#: Grey levels of the co-occurrence matrix.
GLCM_LEVELS = 8

MORPHOLOGY_FEATURES = (
    "h_mean", "h_std", "e_mean", "e_std", "dab_mean", "dab_std",
    "h_centre_mean", "h_centre_std", "e_centre_mean", "e_centre_std",
    "nucleus_fraction", "nucleus_centre_fraction", "nuclei_per_1000um2", "nucleus_area_um2",
    "grey_mean", "grey_std", "gradient_mean", "gradient_std",
    "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation",
)


def morphology_features(patches: np.ndarray, mpp: float) -> np.ndarray:
    """Features ``float32 (n, len(MORPHOLOGY_FEATURES))`` of ``uint8 (n, 3, h, w)`` RGB patches
    at ``mpp`` microns per pixel (columns named by :data:`MORPHOLOGY_FEATURES`)."""
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[1] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"expected uint8 (n, 3, h, w) patches, got {patches.dtype} "
                         f"{patches.shape}")
    n, _, h, w = patches.shape
    centre = (slice(None), slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    stain = _rgb2hed_planes(patches)
    columns = []
    for channel in stain:
        columns += [channel.mean(axis=(1, 2)), channel.std(axis=(1, 2))]
    for channel in stain[:2]:
        columns += [channel[centre].mean(axis=(1, 2)), channel[centre].std(axis=(1, 2))]
    columns += _nuclei(stain[0] > NUCLEUS_H_THRESHOLD, centre, mpp)
    grey = patches.mean(axis=1, dtype=np.float32) / 255.0
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    columns += [grey.mean(axis=(1, 2)), grey.std(axis=(1, 2)), magnitude.mean(axis=(1, 2)),
                magnitude.std(axis=(1, 2))]
    columns += _cooccurrence_statistics(grey)
    return np.column_stack(columns).astype(np.float32)


def _rgb2hed_planes(patches: np.ndarray) -> list[np.ndarray]:
    """:func:`skimage.color.rgb2hed` of ``uint8 (n, 3, h, w)`` as three ``float32 (n, h, w)``
    planes (H, E, DAB): the optical density from a 256-entry table, then the 3 x 3 unmixing
    as plane arithmetic (several times faster than converting every pixel to float64)."""
    from skimage.color import hed_from_rgb

    table = np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)
    density = table.astype(np.float32)[patches]
    unmix = hed_from_rgb.astype(np.float32)
    return [np.maximum(density[:, 0] * unmix[0, k] + density[:, 1] * unmix[1, k]
                       + density[:, 2] * unmix[2, k], 0.0) for k in range(3)]


def _nuclei(mask: np.ndarray, centre: tuple, mpp: float) -> list[np.ndarray]:
    """Nucleus fraction (patch, centre), nuclei per 1,000 µm², mean nucleus area (µm²) of a
    batch of nucleus masks ``bool (n, h, w)``."""
    n, h, w = mask.shape
    # Label the whole batch at once; the structure joins pixels within a patch only.
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(mask, structure=structure)
    pixel_um2 = mpp * mpp
    area = np.bincount(labels.ravel(), minlength=count + 1)
    kept = area * pixel_um2 >= MIN_NUCLEUS_UM2
    kept[0] = False
    nucleus = kept[labels]
    # A component lies in one patch: the patch where its bounding box starts.
    patch_of = np.array([0] + [box[0].start for box in ndimage.find_objects(labels)], np.int64)
    nuclei = np.bincount(patch_of[kept], minlength=n).astype(np.float64)
    nucleus_px = np.count_nonzero(nucleus.reshape(n, -1), axis=1).astype(np.float64)
    centre_px = np.count_nonzero(nucleus[centre].reshape(n, -1), axis=1)
    mean_area = np.divide(nucleus_px * pixel_um2, nuclei, out=np.zeros(n), where=nuclei > 0)
    return [nucleus_px / (h * w), centre_px / nucleus[centre][0].size,
            nuclei / (h * w * pixel_um2) * 1000.0, mean_area]


def _cooccurrence_statistics(grey: np.ndarray) -> list[np.ndarray]:
    """GLCM contrast, homogeneity, energy and correlation of ``grey (n, h, w)`` in [0, 1]:
    each computed for horizontal and for vertical neighbours, then averaged."""
    levels = np.minimum((grey * GLCM_LEVELS).astype(np.int64), GLCM_LEVELS - 1)
    pairs = ((levels[:, :, :-1], levels[:, :, 1:]), (levels[:, :-1, :], levels[:, 1:, :]))
    statistics = [_glcm_statistics(_glcm(a, b)) for a, b in pairs]
    return [(first + second) / 2 for first, second in zip(*statistics)]


def _glcm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Symmetric normalised co-occurrence matrices ``(n, L, L)`` of level pairs ``a``, ``b``."""
    n, size = len(a), GLCM_LEVELS * GLCM_LEVELS
    codes = (a * GLCM_LEVELS + b).reshape(n, -1) + (np.arange(n) * size)[:, None]
    matrix = np.bincount(codes.ravel(), minlength=n * size).reshape(n, GLCM_LEVELS, GLCM_LEVELS)
    matrix = matrix + matrix.transpose(0, 2, 1)
    return matrix / matrix.sum(axis=(1, 2), keepdims=True)


def _glcm_statistics(p: np.ndarray) -> list[np.ndarray]:
    i, j = np.meshgrid(np.arange(GLCM_LEVELS), np.arange(GLCM_LEVELS), indexing="ij")
    contrast = (p * (i - j) ** 2).sum(axis=(1, 2))
    homogeneity = (p / (1.0 + (i - j) ** 2)).sum(axis=(1, 2))
    energy = np.sqrt((p * p).sum(axis=(1, 2)))
    mean_i = (p * i).sum(axis=(1, 2))[:, None, None]
    mean_j = (p * j).sum(axis=(1, 2))[:, None, None]
    var_i = (p * (i - mean_i) ** 2).sum(axis=(1, 2))
    var_j = (p * (j - mean_j) ** 2).sum(axis=(1, 2))
    covariance = (p * (i - mean_i) * (j - mean_j)).sum(axis=(1, 2))
    spread = np.sqrt(var_i * var_j)
    # A single grey level has no correlation; skimage calls it 1 (perfectly predictable).
    correlation = np.divide(covariance, spread, out=np.ones(len(p)), where=spread > 1e-15)
    return [contrast, homogeneity, energy, correlation]


def measure_store(store, rows: np.ndarray, size: int, mpp: float,
                  batch_size: int = 512) -> np.ndarray:
    """:func:`morphology_features` of patch-store rows ``rows`` (a
    :class:`~pastflow.patches.reader.PatchStore`), ``size`` px patches around each centre (the
    encoder's crop, so both see the same pixels): ``float32 (len(rows), n_features)``."""
    out = np.empty((len(rows), len(MORPHOLOGY_FEATURES)), np.float32)
    buffer = np.empty((batch_size, 3, size, size), np.uint8)
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        out[start:start + len(part)] = morphology_features(
            store.read(part, size=size, out=buffer[:len(part)]), mpp)
    return out
