"""Settings of ``pastflow pretrain`` (config section ``pretrain``).

Three parts: ``data`` (gene and pathway targets, neighbours, normalisation, augmentation),
``model`` (encoders by registry name, :mod:`pastflow.models.registry`, with their
``kwargs``; embedding width, spatial context, heads, loss weights) and ``train`` (optimiser,
schedule, batch, checkpoints, loader workers). The resolved section, as a plain dict, is
what a checkpoint's ``config.json`` stores and what rebuilds the model; ``model.genes``,
``model.pathways``, ``model.image_px``, ``model.mpp`` and ``model.patch_um`` are filled in
from the training data at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pastflow.patches.settings import MAX_PATCH_PX
from pastflow.settings import Settings, setting

LIKELIHOODS = ("nb", "poisson", "mse")


@dataclass(frozen=True)
class AugmentSettings(Settings):
    """Training-time patch augmentation."""

    hed_sigma: float = setting(0.05, "HED stain jitter (Tellez et al. 2018); 0 = off", minimum=0)
    brightness: float = setting(0.0, "brightness jitter, +- fraction; 0 = off", minimum=0,
                                maximum=1)
    contrast: float = setting(0.0, "contrast jitter, +- fraction; 0 = off", minimum=0,
                              maximum=1)
    flips: bool = setting(True, "random horizontal and vertical flips")
    rot90: bool = setting(True, "random 90-degree rotations")


@dataclass(frozen=True)
class PretrainDataSettings(Settings):
    """Targets and inputs of pretraining."""

    patch_px: int | None = setting(None, "crop side read from the stores, pixels (null = the "
                                         "store's patch size)", minimum=8,
                                   maximum=MAX_PATCH_PX)
    n_genes: int = setting(2000, "cohort genes: the HVGs flagged in most samples, at most "
                                 "this many", minimum=1)
    genes: list[str] | None = setting(None, "an explicit cohort gene list instead")
    gene_sets: str | None = setting(None, "GMT file of the pathways (null = "
                                          "resources/pathways/pastflow_default.gmt)")
    pathway_method: str = setting("mean_z", "pathway score of a cell",
                                  choices=("mean_z", "aucell"))
    gene_panel: str = setting("union", "genes missing in a sample are masked (`union`), or "
                                       "only genes every sample measured (`shared`)",
                              choices=("union", "shared"))
    pathway_min_genes: int = setting(3, "drop a set in a sample with fewer member genes "
                                        "measured", minimum=1)
    neighbor_radius_um: float | None = setting(None, "neighbours farther than this are "
                                                     "masked, microns (null = any)",
                                               exclusive_minimum=0)
    mean: list[float] | None = setting(None, "patch normalisation mean, R G B (null = the "
                                             "image encoder's own: a named foundation "
                                             "model's, else ImageNet's)")
    std: list[float] | None = setting(None, "patch normalisation std (null = as for mean)",
                                      exclusive_minimum=0)
    augment: AugmentSettings = setting(AugmentSettings(), "training-time augmentation")

    def check(self, fail) -> None:
        if any(value is not None and len(value) != 3 for value in (self.mean, self.std)):
            fail("mean", "mean and std need 3 values each (R, G, B)")


@dataclass(frozen=True)
class EncoderSettings(Settings):
    """An encoder by registry name, with keyword arguments for its builder."""

    name: str = setting("resnet18_cell", "registry name (pastflow.models.registry)")
    kwargs: dict[str, Any] = setting({}, "keyword arguments of the builder (free-form)")


@dataclass(frozen=True)
class SpatialSettings(Settings):
    """Neighbour context (attention over the k nearest cells)."""

    k: int = setting(0, "neighbours attended to; 0 = no spatial context", minimum=0)
    heads: int = setting(4, "attention heads", minimum=1)
    dropout: float = setting(0.0, "attention dropout", minimum=0, maximum=1)


@dataclass(frozen=True)
class ReconstructionSettings(Settings):
    """Expression decoded from the image embedding."""

    likelihood: str = setting("nb", "nb, poisson (counts) or mse (log1p)", choices=LIKELIHOODS)
    hidden: int = setting(256, "hidden width of the head", minimum=1)


@dataclass(frozen=True)
class PathwayHeadSettings(Settings):
    """Pathway scores regressed from the image embedding."""

    hidden: int = setting(128, "hidden width of the head", minimum=1)
    kind: str = setting("mse", "loss of the regression", choices=("mse", "cosine"))


@dataclass(frozen=True)
class TemperatureSettings(Settings):
    """Learnable temperature of the contrastive losses."""

    init: float = setting(0.07, "initial temperature", exclusive_minimum=0)
    min: float = setting(0.01, "lower clamp", exclusive_minimum=0)
    max: float = setting(1.0, "upper clamp", exclusive_minimum=0)

    def check(self, fail) -> None:
        if not self.min <= self.init <= self.max:
            fail("init", f"must lie between min and max ({self.min:g} <= init <= "
                         f"{self.max:g}), got {self.init:g}")


@dataclass(frozen=True)
class LossWeights(Settings):
    """Weight of each part of the total loss; 0 = off."""

    clip: float = setting(1.0, "image <-> expression, InfoNCE", minimum=0)
    soft_clip: float = setting(0.0, "image <-> expression, BLEEP soft targets", minimum=0)
    reconstruction: float = setting(1.0, "expression from the image embedding", minimum=0)
    pathway_regression: float = setting(1.0, "pathway scores from the image embedding",
                                        minimum=0)
    pathway_clip: float = setting(0.5, "image <-> pathway embedding, InfoNCE", minimum=0)


@dataclass(frozen=True)
class ModelSettings(Settings):
    """Encoders, heads and losses."""

    embed_dim: int = setting(128, "width of the shared embedding", minimum=1)
    # From scratch on 64 px simulated cell patches (CPU, 200 steps of 64 cells), resnet18_cell
    # reached held-out InfoNCE 3.61 vs vit_cell 4.30 (chance 4.85), 2.9 vs 3.7 s per step.
    image: EncoderSettings = setting(EncoderSettings(name="resnet18_cell"), "image encoder")
    expression: EncoderSettings = setting(EncoderSettings(name="mlp"), "expression encoder")
    pathway: EncoderSettings = setting(EncoderSettings(name="pathway_mlp"), "pathway encoder")
    spatial: SpatialSettings = setting(SpatialSettings(), "neighbour context")
    reconstruction: ReconstructionSettings = setting(ReconstructionSettings(),
                                                     "expression head")
    pathway_head: PathwayHeadSettings = setting(PathwayHeadSettings(), "pathway head")
    temperature: TemperatureSettings = setting(TemperatureSettings(),
                                               "contrastive temperature")
    soft_target_temperature: float = setting(1.0, "temperature of the BLEEP soft targets",
                                             exclusive_minimum=0)
    losses: LossWeights = setting(LossWeights(), "loss weights")
    genes: list[str] | None = setting(None, "filled at run time: the cohort genes")
    pathways: list[str] | None = setting(None, "filled at run time: the kept gene sets")
    image_px: int | None = setting(None, "filled at run time: crop side in pixels", minimum=1)
    mpp: float | None = setting(None, "filled at run time: microns per pixel of the "
                                      "training patches", exclusive_minimum=0)
    patch_um: float | None = setting(None, "filled at run time: crop side in microns",
                                     exclusive_minimum=0)

    def check(self, fail) -> None:
        if not any(value for value in self.losses.to_dict().values()):
            fail("losses", "every loss weight is 0; nothing to train")


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Optimiser, schedule, batches and checkpoints."""

    steps: int = setting(1000, "optimiser steps", minimum=1)
    # The global batch, and the lr for it, whatever the number of processes: a config trains
    # the same model on 1 or N GPUs (the rule is in pastflow/models/train.py's docstring).
    batch_size: int = setting(64, "cells per optimiser step, all processes together (each of "
                                  "N GPUs takes batch_size / N); contrastive losses compare "
                                  "every cell with the whole batch (need >= 2)", minimum=2)
    lr: float = setting(3e-4, "peak learning rate (AdamW) of the global batch, unchanged by "
                              "the number of processes; choose it again when changing "
                              "batch_size", exclusive_minimum=0, maximum=1)
    weight_decay: float = setting(0.05, "AdamW weight decay", minimum=0)
    warmup_steps: int = setting(50, "linear warm-up steps", minimum=0)
    min_lr_ratio: float = setting(0.01, "cosine decays to lr x this", minimum=0, maximum=1)
    grad_clip: float = setting(1.0, "max gradient norm; 0 = off", minimum=0)
    checkpoint_every: int = setting(200, "steps between checkpoints", minimum=1)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", minimum=1)
    num_workers: int | None = setting(None, "patch-reading worker processes per GPU (null = "
                                            "from the job's CPUs on GPUs, 0 on the CPU)",
                                      minimum=0)
    cache_frozen_features: bool = setting(
        True, "a frozen image encoder (a foundation model in mode frozen) runs once per cell: "
              "its features are cached under the output folder (feature_cache/) and the rest "
              "of the model trains on them, without image augmentation; false: the encoder "
              "runs on every batch, augmented")
    channels_last: bool = setting(True, "on CUDA, the image encoder's convolutions in "
                                        "channels-last memory layout (faster on tensor cores; "
                                        "same results); no effect on the CPU")
    compile: bool = setting(False, "torch.compile the model's forward pass: a minute or more "
                                   "of compilation when training starts (and again when a "
                                   "batch has another crop size), then faster steps; worth it "
                                   "for long GPU runs")
    log_every: int = setting(10, "steps between log lines", minimum=1)
    device: str = setting("auto", "auto: CUDA when torch sees a GPU, else the CPU, but a job "
                                  "given GPUs that finds no CUDA fails (a CPU-only torch); "
                                  "cuda: fail without one; cpu: the CPU even with GPUs",
                          choices=("auto", "cuda", "cpu"))
    # Validation (the sheet's `val` samples, never trained on) runs at every regular
    # checkpoint; the model written is the checkpoint of the lowest validation loss.
    early_stopping_patience: int | None = setting(
        5, "stop after this many checkpoints without a lower validation loss; null or 0 = "
           "train every step (the model is still the checkpoint of the lowest validation "
           "loss); no effect without val samples", minimum=0)
    val_max_cells: int = setting(2048, "validation loss on at most this many cells of the "
                                       "val samples (a fixed seeded subset)", minimum=2)


@dataclass(frozen=True)
class PretrainSettings(Settings):
    """PAST contrastive image <-> expression and STAMP pathway alignment."""

    seed: int = setting(0, "seed of weights, sampling and augmentation", minimum=0)
    recipe: str | None = setting(None, "a paper's recipe merged under the keys set here: past "
                                       "(rank-token cell encoder, soft-target contrastive "
                                       "loss, neighbour context) or stamp (pathway alignment, "
                                       "LoRA on a foundation model); docs in "
                                       "pastflow/pretrain/recipes.py",
                                 choices=("past", "stamp"))
    data: PretrainDataSettings = setting(PretrainDataSettings(), "targets and inputs")
    model: ModelSettings = setting(ModelSettings(), "encoders, heads and losses")
    train: TrainSettings = setting(TrainSettings(), "optimiser, schedule and checkpoints")


def resolve_pretrain_config(section: dict | None, source=None) -> dict:
    """The ``pretrain`` section merged over the defaults and checked, as the plain nested
    dict a checkpoint stores, ``recipe`` (:mod:`pastflow.pretrain.recipes`) merged under the
    section's own keys. Raises :class:`~pastflow.errors.InputError` naming the key.

    ``data.mean`` / ``data.std`` left null become the image encoder's own normalisation
    (:func:`pastflow.models.foundation.encoder_normalisation`), so the checkpoint records it."""
    from pastflow.pretrain.recipes import apply_recipe

    resolved = PretrainSettings.from_config(apply_recipe(section, source), "pretrain",
                                            source).to_dict()
    data = resolved["data"]
    if data["mean"] is None or data["std"] is None:
        from pastflow.models.foundation import encoder_normalisation  # torch: imported late

        mean, std = encoder_normalisation(resolved["model"]["image"]["name"])
        data["mean"] = list(mean) if data["mean"] is None else data["mean"]
        data["std"] = list(std) if data["std"] is None else data["std"]
    return resolved
