"""Patch augmentation (stain and geometry) and normalisation, in numpy, seeded per patch.

Each patch gets its own ``numpy.random.Generator`` (the dataset derives it from the run's
seed, the epoch and the cell's index), so augmentations do not depend on which DataLoader
worker draws the cell, and a resumed run sees exactly the patches the uninterrupted run saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import hed2rgb, rgb2hed


@dataclass(frozen=True)
class Augmentation:
    """What to randomise. ``hed_sigma``: HED stain jitter (Tellez et al., IEEE TMI 2018):
    each stain's optical density becomes ``a * od + b`` with ``a ~ U(1 - s, 1 + s)``,
    ``b ~ U(-s, s)``; ``brightness`` / ``contrast``: +- fractions; ``flips``: horizontal and
    vertical, each with probability 1/2; ``rot90``: a uniform multiple of 90 degrees."""

    hed_sigma: float = 0.05
    brightness: float = 0.0
    contrast: float = 0.0
    flips: bool = True
    rot90: bool = True


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Jitter the haematoxylin, eosin and DAB densities of ``float (h, w, 3)`` RGB in [0, 1]."""
    stains = rgb2hed(rgb)
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3)
    beta = rng.uniform(-sigma, sigma, size=3)
    return np.clip(hed2rgb(stains * alpha + beta), 0.0, 1.0)


def augment_patch(patch: np.ndarray, rng: np.random.Generator,
                  augmentation: Augmentation | None) -> np.ndarray:
    """``uint8 (3, h, w)`` -> augmented ``float32 (3, h, w)`` in [0, 1]."""
    rgb = patch.transpose(1, 2, 0).astype(np.float64) / 255.0
    if augmentation is not None:
        a = augmentation
        if a.hed_sigma > 0:
            rgb = hed_jitter(rgb, rng, a.hed_sigma)
        if a.brightness > 0:
            rgb = rgb + rng.uniform(-a.brightness, a.brightness)
        if a.contrast > 0:
            mean = rgb.mean()
            rgb = (rgb - mean) * rng.uniform(1 - a.contrast, 1 + a.contrast) + mean
        if a.flips:
            if rng.random() < 0.5:
                rgb = rgb[:, ::-1]
            if rng.random() < 0.5:
                rgb = rgb[::-1]
        if a.rot90:
            rgb = np.rot90(rgb, k=int(rng.integers(4)))
        rgb = np.clip(rgb, 0.0, 1.0)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def normalize_patch(patch: np.ndarray, mean, std) -> np.ndarray:
    """``float (3, h, w)`` in [0, 1] -> ``(patch - mean) / std`` per channel."""
    mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(std, np.float32).reshape(3, 1, 1)
    return (patch - mean) / std
