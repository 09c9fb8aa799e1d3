"""The pretraining configuration: defaults, merging a user's YAML over them, and checks.

A configuration is a plain nested dict (JSON-serialisable, so that a checkpoint's
``config.json`` can rebuild the model) with three sections:

- ``data``: gene and pathway targets, neighbours, normalisation, augmentation;
- ``model``: encoders by registry name (:mod:`pastflow.models.registry`) with their
  ``kwargs``, embedding width, spatial context, heads, and the weight of every loss;
- ``train``: optimiser, schedule, batch size, checkpoints, loader workers.

Filled in at run time from the data (and then part of every checkpoint): ``model.genes``
(the cohort gene list), ``model.pathways`` (the kept gene sets) and ``model.image_px``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pastflow.errors import InputError

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "patch_px": None,        # crop size read from the stores; null = the store's patch_px
        "n_genes": 2000,         # cohort genes: the HVGs flagged in most samples, at most this many
        "genes": None,           # or an explicit cohort gene list
        "gene_sets": None,       # GMT file; null = resources/pathways/pastflow_default.gmt
        "pathway_method": "mean_z",   # or "aucell"
        "gene_panel": "union",   # genes missing in a sample are masked; "shared": only genes all measured
        "pathway_min_genes": 3,  # drop a set in a sample with fewer member genes measured
        "neighbor_radius_um": None,   # neighbours farther than this are masked; null = any
        "mean": [0.485, 0.456, 0.406],  # patch normalisation (ImageNet; set a foundation
        "std": [0.229, 0.224, 0.225],   # model's own when starting from one)
        "augment": {
            "hed_sigma": 0.05,   # HED stain jitter (Tellez et al. 2018); 0 = off
            "brightness": 0.0,   # +- fraction; 0 = off
            "contrast": 0.0,     # +- fraction; 0 = off
            "flips": True,
            "rot90": True,
        },
    },
    "model": {
        "embed_dim": 128,
        # From scratch on 64 px simulated cell patches (CPU, 200 steps of 64 cells),
        # resnet18_cell beat vit_cell: held-out InfoNCE 3.61 vs 4.30 (chance 4.85),
        # 2.9 vs 3.7 s per step.
        "image": {"name": "resnet18_cell", "kwargs": {}},
        "expression": {"name": "mlp", "kwargs": {}},
        "pathway": {"name": "pathway_mlp", "kwargs": {}},
        "spatial": {"k": 0, "heads": 4, "dropout": 0.0},  # k = 0: no spatial context
        "reconstruction": {"likelihood": "nb", "hidden": 256},  # nb, poisson or mse (log1p)
        "pathway_head": {"hidden": 128, "kind": "mse"},         # mse or cosine
        "temperature": {"init": 0.07, "min": 0.01, "max": 1.0},
        "soft_target_temperature": 1.0,
        "losses": {               # weight of each part of the total; 0 = off
            "clip": 1.0,           # image <-> expression, InfoNCE
            "soft_clip": 0.0,      # image <-> expression, BLEEP soft targets
            "reconstruction": 1.0,  # expression from the image embedding
            "pathway_regression": 1.0,  # pathway scores from the image embedding
            "pathway_clip": 0.5,   # image <-> pathway embedding, InfoNCE
        },
        "genes": None,
        "pathways": None,
        "image_px": None,
    },
    "train": {
        "steps": 1000,
        "batch_size": 64,        # per process
        "lr": 3e-4,
        "weight_decay": 0.05,
        "warmup_steps": 50,
        "min_lr_ratio": 0.01,    # cosine decays to lr * this
        "grad_clip": 1.0,        # max gradient norm; 0 = off
        "checkpoint_every": 200,
        "keep_checkpoints": 2,
        "num_workers": 2,
        "log_every": 10,
    },
}

# Free-form sections: passed through to builders as they are.
_FREE_FORM = {("model", "image", "kwargs"), ("model", "expression", "kwargs"),
              ("model", "pathway", "kwargs")}
LOSS_NAMES = tuple(DEFAULTS["model"]["losses"])
LIKELIHOODS = ("nb", "poisson", "mse")


def default_config() -> dict:
    """A deep copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def resolve_config(user: dict | None, source: str | Path | None = None) -> dict:
    """``user`` merged over the defaults, checked. ``source`` names the file in errors.

    Raises:
        InputError: a key the defaults do not know (likely misspelt), a section given as a
            scalar, or a value out of range.
    """
    config = default_config()
    _merge(config, user or {}, (), source)
    check_config(config, source)
    return config


def _merge(base: dict, update: dict, path: tuple[str, ...], source) -> None:
    if not isinstance(update, dict):
        raise InputError(source, f"config section {'.'.join(path) or '(root)'} must be a mapping")
    for key, value in update.items():
        here = (*path, key)
        if key not in base:
            raise InputError(source, f"unknown config key {'.'.join(here)!r}")
        if isinstance(base[key], dict) and here not in _FREE_FORM:
            _merge(base[key], value, here, source)
        else:
            base[key] = copy.deepcopy(value)


def check_config(config: dict, source: str | Path | None = None) -> None:
    """Range checks of a merged configuration; raises :class:`InputError` naming the key."""
    def fail(key: str, problem: str):
        raise InputError(source, f"config {key}: {problem}")

    model, train, data = config["model"], config["train"], config["data"]
    if model["reconstruction"]["likelihood"] not in LIKELIHOODS:
        fail("model.reconstruction.likelihood", f"must be one of {LIKELIHOODS}")
    if model["pathway_head"]["kind"] not in ("mse", "cosine"):
        fail("model.pathway_head.kind", "must be 'mse' or 'cosine'")
    if data["pathway_method"] not in ("mean_z", "aucell"):
        fail("data.pathway_method", "must be 'mean_z' or 'aucell'")
    if data["gene_panel"] not in ("union", "shared"):
        fail("data.gene_panel", "must be 'union' or 'shared'")
    for name, weight in model["losses"].items():
        if not isinstance(weight, (int, float)) or weight < 0:
            fail(f"model.losses.{name}", f"weight must be a number >= 0, got {weight!r}")
    if not any(model["losses"].values()):
        fail("model.losses", "every loss weight is 0; nothing to train")
    if int(model["spatial"]["k"]) < 0:
        fail("model.spatial.k", "must be >= 0")
    for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
        if int(train[key]) < 1:
            fail(f"train.{key}", "must be >= 1")
    if int(train["batch_size"]) < 2:
        fail("train.batch_size", "contrastive losses need at least 2 cells per batch")
    if len(data["mean"]) != 3 or len(data["std"]) != 3 or min(data["std"]) <= 0:
        fail("data.mean/std", "need 3 values each, std > 0")
