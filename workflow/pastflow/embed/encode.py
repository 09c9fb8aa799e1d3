"""Run a trained :class:`~pastflow.models.model.PastModel` over a sample: image and expression
embeddings, in batches, without gradients.

Embeddings are the model's pre-normalisation vectors ``(n, embed_dim)``: the image branch's
``h`` (:meth:`PastModel.encode_image`, after spatial fusion when the model has it) and the
expression branch's projection. The contrastive losses compare their L2-normalised versions;
the reconstruction head reads ``h`` itself, so ``h`` is what the predict stage needs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from pastflow.errors import InputError
from pastflow.job_cpus import default_loader_workers
from pastflow.models.augment import prepare_images
from pastflow.models.data import gene_selection_matrix, nearest_neighbors
from pastflow.models.device import on_device
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


class CellBatches(Dataset):
    """Batch ``i`` of store rows ``rows`` (``batch_size`` rows, in order), read from the store:
    ``patch`` ``uint8 (n, 3, s, s)``; with spatial context (``neighbors``: store rows
    ``int64 (len(rows), k)``, -1 = none) also ``neighbor_patches`` ``uint8 (n, k, 3, s, s)``
    and ``neighbor_mask`` ``bool (n, k)``. Absent neighbours read row 0 and are masked out of
    the attention. Streamed by a DataLoader with ``batch_size=None`` (:func:`batch_loader`):
    a worker reads a whole batch, and uint8 crosses to the device (4x less than float)."""

    def __init__(self, store: PatchStore, rows: np.ndarray, size: int, batch_size: int,
                 neighbors: np.ndarray | None = None):
        self.store, self.rows, self.size = store, np.asarray(rows), int(size)
        self.batch_size, self.neighbors = int(batch_size), neighbors

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        part = slice(index * self.batch_size, min(len(self.rows), (index + 1) * self.batch_size))
        batch = {"patch": torch.from_numpy(self.store.read(self.rows[part], size=self.size))}
        if self.neighbors is not None:
            ids = self.neighbors[part]
            mask = ids >= 0
            flat = self.store.read(np.where(mask, ids, 0).ravel(), size=self.size)
            batch["neighbor_patches"] = torch.from_numpy(flat).unflatten(0, ids.shape)
            batch["neighbor_mask"] = torch.from_numpy(mask)
        return batch


def batch_loader(batches: CellBatches, device: torch.device, workers: int) -> DataLoader:
    """The batches in order, read ahead by ``workers`` processes (0 = in this process), into
    pinned memory on CUDA so that the copy to the device runs asynchronously."""
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)


def embed_devices(device: str | torch.device) -> list[torch.device]:
    """The devices an embedding runs on: every visible GPU for ``cuda`` without an index,
    else ``device`` alone (``cuda:1``, ``cpu``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return [torch.device("cuda", i) for i in range(max(1, torch.cuda.device_count()))]
    return [device]


def embed_images(model: PastModel, store: PatchStore, rows: np.ndarray, *, mean: Sequence[float],
                 std: Sequence[float], batch_size: int,
                 neighbor_radius_um: float | None = None,
                 device: str | torch.device | Sequence[str | torch.device] = "cpu",
                 num_workers: int | None = None, progress: bool = True,
                 desc: str = "embed images") -> np.ndarray:
    """Image embeddings ``float32 (len(rows), embed_dim)`` of store rows ``rows``.

    Patches are cropped from the store at the model's ``image_px`` around a cell, whole around
    a spot (:func:`~pastflow.resolution.crop_px`), and normalised with the
    training ``mean``/``std``. With spatial fusion (``model.k_neighbors > 0``) each cell's
    neighbours are its nearest cells among ``rows``. bf16 autocast on CUDA, fp32 on CPU.

    ``device``: one device, or several GPUs (:func:`embed_devices`): the rows are split into
    one contiguous shard per GPU, each embedded by a replica of the model in a thread of its
    own, and the shards joined in order. ``num_workers``: patch-reading processes per device
    (None: from the job's CPUs on CUDA, :func:`pastflow.job_cpus.loader_workers`; 0 on CPU,
    where the forward pass needs every core and reading is a small part of the time).
    """
    from pastflow.progress import progress_bar

    devices = [torch.device(d) for d in
               ([device] if isinstance(device, (str, torch.device)) else device)]
    devices = devices[:max(1, len(rows))]
    model = model.to(devices[0]).eval()
    # Replicas after the first: copies of the model moved to their own GPU.
    models = [model] + [copy.deepcopy(model).to(d) for d in devices[1:]]
    size = crop_px(store, model.config["image_px"])
    k = model.k_neighbors
    # Neighbours among all rows, before sharding: a shard's edge cells keep theirs.
    neighbors = neighbor_rows(store, rows, k, neighbor_radius_um) if k else None
    if num_workers is None:
        num_workers = default_loader_workers(devices[0].type, len(devices))
    shards = np.array_split(np.arange(len(rows)), len(devices))
    # Every loader's worker processes are forked here, in the calling thread, before any
    # device thread runs (a fork beside running threads can inherit a held lock).
    streams = [iter(batch_loader(CellBatches(store, rows[shard], size, batch_size,
                                             None if neighbors is None else neighbors[shard]),
                                 d, num_workers))
               for shard, d in zip(shards, devices)]
    lock = threading.Lock()
    with progress_bar(total=len(rows), unit="cell", desc=desc, enabled=progress) as bar:
        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        jobs = [(m, s, len(shard), d, mean, std, advance)
                for m, s, shard, d in zip(models, streams, shards, devices)]
        if len(jobs) == 1:
            parts = [_embed_stream(*jobs[0])]
        else:
            with ThreadPoolExecutor(len(jobs)) as pool:
                parts = list(pool.map(lambda job: _embed_stream(*job), jobs))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _embed_stream(model: PastModel, stream, n: int, device: torch.device,
                  mean: Sequence[float], std: Sequence[float], advance) -> np.ndarray:
    """Embeddings ``float32 (n, embed_dim)`` of the batches of ``stream`` on ``device``.

    The current device, inference mode and autocast are per thread, so they are set here.
    Results stay on the device until the end: reading each batch back would wait for the GPU
    every batch."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    current = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with current, torch.inference_mode():
        out = torch.empty((n, int(model.config["embed_dim"])), dtype=torch.float32,
                          device=device)
        start = 0
        for batch in on_device(stream, device):
            images = prepare_images(batch, None, mean, std)
            with autocast:
                h = model.encode_image(images["patch"], images.get("neighbor_patches"),
                                       images.get("neighbor_mask"))
            out[start:start + len(h)] = h.float()
            start += len(h)
            advance(len(h))
        return out.cpu().numpy()


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
