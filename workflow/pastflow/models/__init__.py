"""The ``pretrain`` stage: PAST/STAMP models aligning H&E patches with expression and pathways.

- ``registry.py``: one registry of encoders by name (``build_image_encoder`` ...);
  ``image.py`` (timm from scratch, or a local foundation model + LoRA via ``lora.py``),
  ``expression.py`` (gene MLP, rank-token transformer, pathway MLP), ``spatial.py``
  (neighbour attention); ``compat.py`` imports timm/peft where torchvision's ops cannot load;
- ``pathways.py``: GMT gene sets and per-cell pathway scores;
- ``losses.py``: contrastive, soft-target, NB/Poisson/MSE reconstruction, pathway losses;
- ``model.py``: :class:`PastModel`; ``config.py``: defaults and checks;
- ``data.py`` + ``augment.py``: the multi-sample cell dataset, sampler and loader;
- ``checkpoint.py`` + ``serialize.py`` + ``weights.py``: safetensors + JSON checkpoints,
  never pickles;
- ``train.py`` (+ ``distributed.py``, ``curves.py``): :func:`pretrain`; ``cli.py``:
  ``pastflow pretrain``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PastModel": "pastflow.models.model",
    "resolve_config": "pastflow.models.config",
    "default_config": "pastflow.models.config",
    "build_image_encoder": "pastflow.models.registry",
    "build_expression_encoder": "pastflow.models.registry",
    "build_pathway_encoder": "pastflow.models.registry",
    "register_image_encoder": "pastflow.models.registry",
    "list_encoders": "pastflow.models.registry",
    "read_gmt": "pastflow.models.pathways",
    "score_pathways": "pastflow.models.pathways",
    "CellDataset": "pastflow.models.data",
    "save_checkpoint": "pastflow.models.checkpoint",
    "load_checkpoint": "pastflow.models.checkpoint",
    "pretrain": "pastflow.models.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that `pastflow --help` (which imports pastflow.models.cli) loads no torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
