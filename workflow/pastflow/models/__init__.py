"""PAST/STAMP models aligning H&E patches with expression and pathways: what the ``pretrain``
stage (:mod:`pastflow.pretrain`: its command and settings) trains and later stages load.

- ``registry.py``: one registry of encoders by name (``build_image_encoder`` ...);
  ``image.py`` (timm from scratch, or a local foundation model + LoRA via ``lora.py``),
  ``expression.py`` (gene MLP, rank-token transformer, pathway MLP), ``spatial.py``
  (neighbour attention); ``compat.py`` imports timm/peft where torchvision's ops cannot load;
- ``pathways.py``: GMT gene sets and per-cell pathway scores;
- ``losses.py``: contrastive, soft-target, NB/Poisson/MSE reconstruction, pathway losses;
- ``model.py``: :class:`PastModel`;
- ``data.py`` + ``augment.py``: the multi-sample cell dataset, sampler and loader;
- ``checkpoint.py`` + ``serialize.py`` + ``weights.py``: safetensors + JSON checkpoints,
  never pickles;
- ``train.py`` (+ ``distributed.py``, ``curves.py``): :func:`pretrain`.
"""
