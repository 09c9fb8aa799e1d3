"""Colour deconvolution (Ruifrok & Johnston 2001) with scikit-image, and the DAB pixel H-score.

scikit-image's ``rgb2hed`` returns stain amounts in its own unit: ``-ln(I) / -ln(1e-6)`` projected
on the unit stain vectors, i.e. optical density (OD, base 10) divided by 6 (``log10(1e6)``).
:data:`OD_PER_SKIMAGE_UNIT` converts to the OD10 units that QuPath and ImageJ's IHC Profiler
use, so the usual DAB thresholds (0.12, 0.24, 0.6 OD) apply unchanged.

Arrays are ``uint8 (h, w, 3)`` RGB unless said otherwise; OD maps are ``float32 (h, w)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import hed2rgb, rgb2hed

# rgb2hed divides ln(I) by ln(1e-6): OD10 = -log10(I) = 6 x (skimage unit).
OD_PER_SKIMAGE_UNIT = -np.log10(1e-6)

# QuPath's default DAB OD thresholds for 1+ / 2+ / 3+ (Positive cell detection, "three
# thresholds"); pixels below the first are negative (hematoxylin only).
DAB_THRESHOLDS = (0.12, 0.24, 0.6)
# A pixel is tissue when its summed RGB optical density exceeds this: excludes glass/white
# background, which would otherwise dilute every percentage.
TISSUE_OD = 0.15


def separate_stains(rgb: np.ndarray) -> np.ndarray:
    """``float32 (h, w, 3)``: hematoxylin, eosin, DAB optical density (OD10 units, >= 0)."""
    return (rgb2hed(rgb) * OD_PER_SKIMAGE_UNIT).astype(np.float32)


def dab_optical_density(rgb: np.ndarray) -> np.ndarray:
    """``float32 (h, w)`` DAB optical density (OD10) of an RGB image."""
    return separate_stains(rgb)[..., 2]


def combine_stains(od: np.ndarray) -> np.ndarray:
    """Beer-Lambert recombination of ``(h, w, 3)`` H, E, DAB OD10 -> ``uint8 (h, w, 3)`` RGB."""
    rgb = hed2rgb(np.asarray(od, np.float64) / OD_PER_SKIMAGE_UNIT)
    return np.round(rgb * 255).astype(np.uint8)


def hematoxylin_only(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The counterstain of an H&E: ``(rgb uint8 (h, w, 3), hematoxylin OD float32 (h, w))``.

    Eosin and DAB are zeroed and the hematoxylin is recombined alone, so nuclei stay blue on
    white, as in an IHC slide's counterstain.
    """
    hema = separate_stains(rgb)[..., 0]
    od = np.zeros(hema.shape + (3,), np.float32)
    od[..., 0] = hema
    return combine_stains(od), hema


def tissue_pixels(rgb: np.ndarray, min_od: float = TISSUE_OD) -> np.ndarray:
    """``bool (h, w)``: pixels whose summed RGB optical density exceeds ``min_od``."""
    intensity = np.maximum(np.asarray(rgb, np.float32) / 255.0, 1e-6)
    return -np.log10(intensity).sum(axis=-1) > min_od


@dataclass(frozen=True)
class PixelHScore:
    """DAB pixel classes over the tissue pixels of an image (percentages sum to 100)."""

    n_pixels: int  # tissue pixels scored
    pct_0: float
    pct_1: float
    pct_2: float
    pct_3: float

    @property
    def pct_positive(self) -> float:
        return self.pct_1 + self.pct_2 + self.pct_3

    @property
    def hscore(self) -> float:
        """1 x %1+ + 2 x %2+ + 3 x %3+, 0 to 300."""
        return self.pct_1 + 2 * self.pct_2 + 3 * self.pct_3


def dab_hscore(rgb: np.ndarray, thresholds: tuple[float, float, float] = DAB_THRESHOLDS,
               mask: np.ndarray | None = None, min_od: float = TISSUE_OD) -> PixelHScore:
    """Pixel H-score of an IHC image from its DAB optical density (as QuPath / IHC Profiler).

    Every tissue pixel (``mask``, default :func:`tissue_pixels`) is classed 0 / 1+ / 2+ / 3+
    by its DAB OD against ``thresholds`` (OD10, increasing); H-score = 1 x %1+ + 2 x %2+ +
    3 x %3+ over those pixels.
    """
    if not (0 < thresholds[0] < thresholds[1] < thresholds[2]):
        raise ValueError(f"thresholds must be positive and increasing, got {thresholds}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (h, w, 3), got shape {rgb.shape}")
    if mask is None:
        mask = tissue_pixels(rgb, min_od)
    dab = dab_optical_density(rgb)[mask]
    if dab.size == 0:
        return PixelHScore(0, np.nan, np.nan, np.nan, np.nan)
    counts = np.bincount(np.searchsorted(thresholds, dab, side="right"), minlength=4)
    pct = 100.0 * counts / dab.size
    return PixelHScore(int(dab.size), *map(float, pct))
