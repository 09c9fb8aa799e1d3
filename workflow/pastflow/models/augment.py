"""Patch augmentation (stain and geometry) and normalisation of whole batches, on their device.

The random draws and the pixel work are split. Each patch's draws come from its own
``numpy.random.Generator``, seeded by the run's seed, the epoch and the cell's index
(:func:`draw_parameters`, called by the dataset in the loader's workers: a few numbers per
patch), so a patch's augmentation does not depend on the worker, the batch it lands in or
the number of ranks, and a resumed run sees exactly the patches the uninterrupted run saw.
The pixel work (:func:`prepare_images`) runs once per batch where the batch is: on the GPU
when training on one, as tensor operations, instead of per patch in the loader's processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed

# One row of per-patch parameters: HED scale (3), HED shift (3), brightness shift, contrast
# factor, horizontal flip, vertical flip, quarter turns.
N_PARAMETERS = 11
_SCALE, _SHIFT, _BRIGHTNESS, _CONTRAST, _FLIP_H, _FLIP_V, _TURNS = (
    slice(0, 3), slice(3, 6), 6, 7, 8, 9, 10)
# Optical density as scikit-image's rgb2hed / hed2rgb compute it (Ruifrok & Johnston).
_LOG_FLOOR = float(np.log(1e-6))


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


def draw_parameters(augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """One patch's draws, ``float32 (N_PARAMETERS,)``; what is switched off is the identity."""
    a = augmentation
    s = a.hed_sigma
    row = np.empty(N_PARAMETERS, np.float32)
    row[_SCALE] = rng.uniform(1 - s, 1 + s, size=3)
    row[_SHIFT] = rng.uniform(-s, s, size=3)
    row[_BRIGHTNESS] = rng.uniform(-a.brightness, a.brightness)
    row[_CONTRAST] = rng.uniform(1 - a.contrast, 1 + a.contrast)
    flips = rng.random(2) < 0.5
    row[_FLIP_H], row[_FLIP_V] = flips if a.flips else (False, False)
    row[_TURNS] = rng.integers(4) if a.rot90 else 0
    return row


def hed_jitter(rgb: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``float (n, 3, h, w)`` RGB in [0, 1] with each stain's density ``od`` made
    ``scale * od + shift`` (``(n, 3)`` each), in float32, as rgb2hed then hed2rgb do."""
    # rgb2hed: stains = max(log(max(rgb, 1e-6)) / log(1e-6) @ hed_from_rgb, 0);
    # hed2rgb: rgb = clip(exp(log(1e-6) * stains @ rgb_from_hed), 0, 1).
    stains = _mix(rgb.clamp(min=1e-6).log_(), hed_from_rgb / _LOG_FLOOR).clamp_(min=0)
    stains.mul_(scale[:, :, None, None]).add_(shift[:, :, None, None])
    return _mix(stains, rgb_from_hed * _LOG_FLOOR).exp_().clamp_(0.0, 1.0)


def _mix(planes: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """``out[:, d] = sum_c planes[:, c] * matrix[c, d]`` for ``(n, 3, h, w)`` planes: nine
    scaled additions of whole planes, several times faster on the CPU than a matrix product
    over the channel axis (which strides across planes)."""
    out = torch.empty_like(planes)
    for d in range(3):
        torch.mul(planes[:, 0], float(matrix[0, d]), out=out[:, d])
        out[:, d].add_(planes[:, 1], alpha=float(matrix[1, d]))
        out[:, d].add_(planes[:, 2], alpha=float(matrix[2, d]))
    return out


def _dihedral(images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """Flips, then quarter turns (counter-clockwise, as ``numpy.rot90``), per patch: each
    distinct transform once, on the patches that drew it."""
    codes = (parameters[:, _FLIP_H].long() * 8 + parameters[:, _FLIP_V].long() * 4
             + parameters[:, _TURNS].long())
    if not bool((codes != 0).any()):
        return images
    out = images.clone()
    for code in codes.unique().tolist():
        if code == 0:
            continue
        chosen = (codes == code).nonzero().squeeze(1)
        part = images.index_select(0, chosen)
        if code & 8:
            part = part.flip(-1)
        if code & 4:
            part = part.flip(-2)
        part = torch.rot90(part, code & 3, dims=(-2, -1))
        out.index_copy_(0, chosen, part.contiguous())
    return out


def augment(images: torch.Tensor, parameters: torch.Tensor,
            augmentation: Augmentation) -> torch.Tensor:
    """``float (n, 3, s, s)`` in [0, 1] augmented by each patch's ``parameters`` row
    (:func:`draw_parameters`): stain jitter, brightness, contrast, flips, turns."""
    parameters = parameters.to(images.device, torch.float32)
    a = augmentation
    if a.hed_sigma > 0:
        images = hed_jitter(images, parameters[:, _SCALE], parameters[:, _SHIFT])
    if a.brightness > 0:
        images = images + parameters[:, _BRIGHTNESS, None, None, None]
    if a.contrast > 0:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * parameters[:, _CONTRAST, None, None, None] + mean
    if a.flips or a.rot90:
        images = _dihedral(images, parameters)
    return images.clamp(0.0, 1.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8`` or ``float`` in [0, 1], ``(..., 3, s, s)`` -> ``float32 (x - mean) / std``
    per channel."""
    images = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    mean_t, std_t = _channel_constants(tuple(mean), tuple(std), images.device)
    return images.sub(mean_t).div_(std_t)


@functools.lru_cache(maxsize=16)
def _channel_constants(mean: tuple, std: tuple, device: torch.device):
    """``(mean, std)`` as ``(3, 1, 1)`` tensors on ``device``, made once: a copy from host
    memory each batch would wait for the GPU. Plain tensors even when first made under
    inference mode (embedding), so that training may use them too."""
    with torch.inference_mode(False):
        return (torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
                torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1))


def prepare_images(batch: dict, augmentation: Augmentation | None, mean: Sequence[float],
                   std: Sequence[float]) -> dict:
    """The batch as the model takes it: its ``uint8`` ``patch`` (and ``neighbor_patches``)
    augmented by their drawn parameters (``augment`` / ``neighbor_augment``, when the
    dataset drew them) and normalised, on the batch's device. Absent neighbours are zeros
    after normalisation (the fusion masks them). A batch of cached encoder features (no
    ``patch``) has nothing to prepare."""
    if "patch" not in batch:
        return batch
    out = dict(batch)
    patches = batch["patch"].float().div(255.0)
    if augmentation is not None and "augment" in batch:
        patches = augment(patches, batch["augment"], augmentation)
    out["patch"] = normalize(patches, mean, std)
    if "neighbor_patches" in batch:
        neighbours = batch["neighbor_patches"]
        n, k = neighbours.shape[:2]
        flat = neighbours.flatten(0, 1).float().div(255.0)
        if augmentation is not None and "neighbor_augment" in batch:
            flat = augment(flat, batch["neighbor_augment"].flatten(0, 1), augmentation)
        flat = normalize(flat, mean, std).unflatten(0, (n, k))
        out["neighbor_patches"] = flat * batch["neighbor_mask"][:, :, None, None, None]
    out.pop("augment", None)
    out.pop("neighbor_augment", None)
    return out
