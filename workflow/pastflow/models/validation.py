"""Validation loss of pretraining: the training loss on the sheet's ``val`` samples.

The ``val`` samples are never trained on. At every regular checkpoint the model, in eval
mode and without augmentation, scores the same fixed cells of them (all, or a seeded subset
of ``train.val_max_cells``) in the same fixed batches, so the losses of two checkpoints
compare like with like and a resumed run computes what an uninterrupted one does. The cells
are read on the cohort's genes and pathways (those of the training samples): a val sample
cannot change what the model learns.

Early stopping (:func:`stale_checkpoints`): the model kept is the checkpoint with the lowest
validation loss; training stops after ``train.early_stopping_patience`` evaluations without
a lower one. Both are computed from the validation history a checkpoint holds, so they
resume with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pastflow.errors import InputError
from pastflow.models.augment import prepare_images
from pastflow.models.data import CellDataset
from pastflow.models.distributed import DistContext
from pastflow.resolution import check_resolution, training_resolution

log = logging.getLogger(__name__)

VAL_PREFIX = "val_"  # validation columns of metrics.tsv: val_loss, val_<part>


@dataclass
class ValidationSet:
    """The val samples' cells (``dataset``, no augmentation) and the fixed ``batches``
    (dataset indices) the loss is computed on."""

    dataset: CellDataset
    batches: list[np.ndarray]

    @property
    def n_cells(self) -> int:
        return int(sum(len(b) for b in self.batches))


def validation_set(config: dict, stores: Sequence[str | Path], tables: Sequence[str | Path],
                   training: CellDataset) -> ValidationSet:
    """The val samples as the model sees them: the cohort's genes and pathways, crops of the
    training ``patch_px`` at the model's resolution, no augmentation.

    Raises:
        InputError: stores at another resolution than the training ones; too few cells for
            one batch of two.
    """
    data, model = config["data"], config["model"]
    dataset = CellDataset(
        stores, tables, genes=training.genes, gene_sets=data["gene_sets"],
        pathways=training.pathways, pathway_method=data["pathway_method"],
        pathway_min_genes=data["pathway_min_genes"], k_neighbors=model["spatial"]["k"],
        neighbor_radius_um=data["neighbor_radius_um"], patch_px=training.patch_px,
        mean=data["mean"], std=data["std"], augmentation=None, seed=config["seed"])
    mpp, _ = training_resolution(stores, dataset.patch_px)
    check_resolution(model, mpp, source=stores[0], model_source="the training stores")
    batches = fixed_batches(dataset.groups(), int(config["train"]["batch_size"]),
                            int(config["train"]["val_max_cells"]), int(config["seed"]))
    if not batches:
        raise InputError(tables[0], f"the validation samples hold {len(dataset)} usable cells: "
                                    "too few for a validation batch of 2")
    return ValidationSet(dataset, batches)


def fixed_batches(groups: Sequence[np.ndarray], batch_size: int, max_cells: int,
                  seed: int) -> list[np.ndarray]:
    """Batches of at most ``batch_size`` dataset indices, each of one crop-size group, over
    all cells or a seeded subset of ``max_cells``. A trailing batch of one cell joins the
    batch before it (a contrastive loss needs two); a group of one cell is left out."""
    everything = np.sort(np.concatenate([np.asarray(g, np.int64) for g in groups]))
    chosen = everything
    if len(everything) > max_cells:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(everything, max_cells, replace=False))
    batches: list[np.ndarray] = []
    for group in groups:
        members = np.sort(np.asarray(group, np.int64)[np.isin(group, chosen)])
        chunks = [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            last = chunks.pop()
            chunks[-1] = np.concatenate([chunks[-1], last])
        batches.extend(c for c in chunks if len(c) >= 2)
    return batches


@torch.no_grad()
def validation_loss(model, validation: ValidationSet, context: DistContext,
                    autocast) -> dict[str, float]:
    """``{"loss": total, part: value, ...}``: the cell-weighted mean over the validation
    batches, in eval mode. Ranks share the batches and add their sums (in rank order)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch_indices in validation.batches[context.rank::context.world_size]:
        batch = validation.dataset.batch(batch_indices)
        batch = {k: v.to(context.device, non_blocking=True) for k, v in batch.items()}
        batch = prepare_images(batch, None, validation.dataset.mean, validation.dataset.std)
        with autocast:
            outputs = model(batch)
        total, parts = model.compute_loss(outputs, batch)
        size = len(batch_indices)
        for name, value in (("loss", total), *parts.items()):
            sums[name] = sums.get(name, 0.0) + float(value.item()) * size
        n += size
    model.train(was_training)
    per_rank = context.gather((n, sums))
    total_n = sum(count for count, _ in per_rank)
    names = next(s for count, s in per_rank if count)  # rank 0 always has a batch
    return {name: sum(s.get(name, 0.0) for _, s in per_rank) / total_n for name in names}


def stale_checkpoints(val_losses: Sequence[float]) -> tuple[int | None, int]:
    """``(index of the lowest validation loss, evaluations since it)``; the first of equal
    losses is the best, a NaN loss never is. ``(None, 0)`` for an empty history."""
    if not len(val_losses):
        return None, 0
    losses = np.asarray(val_losses, np.float64)
    best = int(np.argmin(np.where(np.isnan(losses), np.inf, losses)))
    return best, len(val_losses) - 1 - best
