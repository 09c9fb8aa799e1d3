"""Run a trained :class:`~pastflow.models.model.PastModel` over a sample: image and expression
embeddings, in batches, without gradients.

Embeddings are the model's pre-normalisation vectors ``(n, embed_dim)``: the image branch's
``h`` (:meth:`PastModel.encode_image`, after spatial fusion when the model has it) and the
expression branch's projection. The contrastive losses compare their L2-normalised versions;
the reconstruction head reads ``h`` itself, so ``h`` is what the predict stage needs.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from pastflow.errors import InputError
from pastflow.models.data import gene_selection_matrix, nearest_neighbors
from pastflow.models.model import PastModel
from pastflow.patches.reader import PatchStore
from pastflow.resolution import crop_px

log = logging.getLogger(__name__)


def random_model(config: dict, seed: int) -> PastModel:
    """The architecture of ``config`` (a checkpoint's resolved config) with seeded random
    weights, in eval mode: the random-encoder baseline. Local foundation weights named in the
    config are not read, so the whole encoder is random."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = PastModel(config["model"], load_pretrained=False)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's stream untouched
    return model.eval()


def neighbor_rows(store: PatchStore, rows: np.ndarray, k: int,
                  radius_um: float | None) -> np.ndarray:
    """``int64 (n, k)``: the store rows of each cell's ``k`` nearest cells among ``rows``
    (-1 = none), as the training dataset finds them (microns, same sample)."""
    local = nearest_neighbors(np.asarray(store.xy_level0)[rows] * store.slide_mpp, k, radius_um)
    return np.where(local >= 0, rows[np.clip(local, 0, None)], -1)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _normalise(patches: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
               device: torch.device) -> torch.Tensor:
    """``uint8 (..., 3, s, s)`` -> ``float32`` on ``device``, ``(x / 255 - mean) / std``, as in
    training (:func:`pastflow.models.augment.normalize_patch` without augmentation)."""
    tensor = torch.from_numpy(patches).to(device, non_blocking=True).float().div_(255.0)
    return tensor.sub_(mean).div_(std)


@torch.inference_mode()
def embed_images(model: PastModel, store: PatchStore, rows: np.ndarray, *, mean: Sequence[float],
                 std: Sequence[float], batch_size: int,
                 neighbor_radius_um: float | None = None, device: str | torch.device = "cpu",
                 progress: bool = True, desc: str = "embed images") -> np.ndarray:
    """Image embeddings ``float32 (len(rows), embed_dim)`` of store rows ``rows``.

    Patches are cropped from the store at the model's ``image_px`` around a cell, whole around
    a spot (:func:`~pastflow.resolution.crop_px`), and normalised with the
    training ``mean``/``std``. With spatial fusion (``model.k_neighbors > 0``) each cell's
    neighbours are its nearest cells among ``rows``. bf16 autocast on CUDA, fp32 on CPU.
    """
    from pastflow.progress import progress_bar

    device = torch.device(device)
    model = model.to(device).eval()
    size = crop_px(store, model.config["image_px"])
    k = model.k_neighbors
    neighbors = neighbor_rows(store, rows, k, neighbor_radius_um) if k else None
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    out = np.empty((len(rows), int(model.config["embed_dim"])), np.float32)
    buffer = np.empty((batch_size * (1 + k), 3, size, size), np.uint8)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with progress_bar(total=len(rows), unit="cell", desc=desc, enabled=progress) as bar:
        for part in _batches(len(rows), batch_size):
            n = part.stop - part.start
            patches = _normalise(store.read(rows[part], size=size, out=buffer[:n]), mean_t, std_t,
                                 device)
            neighbor_patches = neighbor_mask = None
            if k:
                ids = neighbors[part]
                mask = ids >= 0
                # Absent neighbours read row 0 and are masked out of the attention.
                flat = store.read(np.where(mask, ids, 0).ravel(), size=size,
                                  out=buffer[n:n + n * k])
                neighbor_patches = _normalise(flat, mean_t, std_t, device).unflatten(0, (n, k))
                neighbor_mask = torch.from_numpy(mask).to(device)
            with autocast:
                h = model.encode_image(patches, neighbor_patches, neighbor_mask)
            out[part] = h.float().cpu().numpy()
            bar.update(n)
    return out


@torch.inference_mode()
def embed_expression(model: PastModel, expression: sp.spmatrix | np.ndarray,
                     genes: Sequence[str], *, batch_size: int = 1024,
                     device: str | torch.device = "cpu", source=None) -> np.ndarray:
    """Expression embeddings ``float32 (n, embed_dim)`` of log1p-normalised ``expression``
    ``(n, len(genes))`` (a QC table's ``X``), put in the model's cohort gene order; cohort
    genes the sample lacks are 0 and masked, as in training.

    Raises:
        InputError: the model has no expression branch, or the sample measures none of its
            genes (``source`` names the table).
    """
    if model.expression_encoder is None:
        raise InputError(source, "the model has no expression encoder (the clip losses were "
                                 "off in pretraining)")
    selection, measured = gene_selection_matrix(list(genes), model.genes)
    if not measured.any():
        raise InputError(source, f"measures none of the model's {len(model.genes)} genes")
    device = torch.device(device)
    model = model.to(device).eval()
    cohort = (sp.csr_matrix(expression, dtype=np.float32) @ selection).tocsr()
    mask = torch.from_numpy(measured).to(device).expand(batch_size, -1)
    out = np.empty((cohort.shape[0], int(model.config["embed_dim"])), np.float32)
    for part in _batches(cohort.shape[0], batch_size):
        values = torch.from_numpy(cohort[part].toarray()).to(device)
        encoded = model.expression_encoder(values, mask[:len(values)])
        out[part] = model.expression_projection(encoded).float().cpu().numpy()
    return out
