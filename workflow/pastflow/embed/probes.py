"""Probe encoders: named foundation models run frozen over every cell, so that the evaluation
reads each of them out with the same ridge probe as pastflow's own embeddings
(``embed.probe_encoders: {resnet50_imagenet: PATH}``: the HEST-Benchmark's ResNet50-ImageNet
+ ridge baseline when its weights are given; any model of :mod:`pastflow.models.foundation`).

A probe sees the crop pastflow's model sees (the store's resolution, the model's
``image_px``, a spot whole), resized to the probe's own input side and normalised with its
own statistics. Cut the stores at its resolution (``patches.mpp``, ``patches.patch_um``) for
the probe to see what its model card describes; the embedding table records both.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pastflow.models.foundation import build_foundation_encoder, foundation_model

OBSM_PREFIX = "X_probe_"  # the evaluation's pastflow.predict.evaluate.PROBE_ENCODER_PREFIX


class ProbeEncoder(torch.nn.Module):
    """A frozen foundation model with the interface :func:`pastflow.embed.encode.embed_images`
    uses: ``encode_image(patch, ...)`` -> features, ``config["image_px"]`` (the crop read from
    the store: pastflow's model's), ``config["embed_dim"]`` (the feature width) and no
    neighbours. The crop is resized to the model's own input side first."""

    k_neighbors = 0

    def __init__(self, name: str, weights: str | Path, crop_image_px: int):
        super().__init__()
        self.spec = foundation_model(name)
        self.encoder = build_foundation_encoder(name, image_px=self.spec.image_px,
                                                weights=weights, mode="frozen")
        self.config = {"image_px": int(crop_image_px), "embed_dim": int(self.encoder.out_dim)}

    @torch.no_grad()
    def encode_image(self, patch: torch.Tensor, *_neighbours) -> torch.Tensor:
        size = self.spec.image_px
        if patch.shape[-1] != size:
            patch = F.interpolate(patch, size=(size, size), mode="bilinear",
                                  align_corners=False, antialias=True)
        return self.encoder(patch)


def obsm_key(name: str) -> str:
    return f"{OBSM_PREFIX}{name}"
