"""The input of each named pathology foundation model: its side in pixels and its microns per
pixel (the 20x tiles of its model card), without importing torch.

The workflow reads it at start-up to cut the patch stores at the model's own resolution and
size (:func:`pastflow.config.resolve_workflow_config`); :mod:`pastflow.models.foundation`
builds each model with these numbers.
"""

from __future__ import annotations

# name -> (input side in pixels, microns per pixel)
FOUNDATION_INPUTS: dict[str, tuple[int, float]] = {
    "uni": (224, 0.5),
    "uni2_h": (224, 0.5),
    "conch": (448, 0.5),
    "h_optimus_0": (224, 0.5),
    "virchow2": (224, 0.5),
    "prov_gigapath": (224, 0.5),
    "phikon_v2": (224, 0.5),
    "resnet50_imagenet": (224, 0.5),
}


def foundation_input(name: str) -> tuple[int, float] | None:
    """``(image_px, mpp)`` of the named foundation model; None for any other encoder."""
    return FOUNDATION_INPUTS.get(name)
