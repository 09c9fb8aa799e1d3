"""Named pretraining recipes: what the PAST and STAMP papers switch on.

A recipe is a partial ``pretrain`` section merged *under* the user's own keys
(``pretrain.recipe: past``), so every key the config sets explicitly still wins and the
resolved config (recorded in the checkpoint) shows the values used.

- ``past`` (PAST, arXiv 2507.06418): the rank-ordered gene-token cell encoder
  (``rank_transformer``), the contrastive loss with soft targets (BLEEP-style ``soft_clip``
  in place of the one-hot InfoNCE), and neighbour-context fusion (attention over the 6
  nearest cells). The expression head stays on (predict needs it); pathway losses are off.
- ``stamp`` (STAMP, arXiv 2606.03644): pathway-level alignment (pathway InfoNCE and pathway
  regression at full weight, beside the image <-> expression loss) and LoRA on a pathology
  foundation model (``model.image.kwargs.mode: lora``, rank 8, alpha 8 on the attention
  projections). The foundation model and its weights are the user's: ``model.image.name``
  must be one of :data:`pastflow.models.foundation.FOUNDATION_MODELS`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from pastflow.errors import InputError

RECIPES: dict[str, dict[str, Any]] = {
    "past": {"model": {
        "expression": {"name": "rank_transformer"},
        "spatial": {"k": 6},
        "losses": {"clip": 0.0, "soft_clip": 1.0, "pathway_regression": 0.0,
                   "pathway_clip": 0.0},
    }},
    "stamp": {"model": {
        "image": {"kwargs": {"mode": "lora"}},
        "losses": {"pathway_clip": 1.0, "pathway_regression": 1.0},
    }},
}


def merge_under(base: Mapping, over: Mapping) -> dict:
    """``base`` with ``over`` merged on top, key by key through nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_under(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_recipe(section: Mapping | None, source=None) -> dict:
    """The ``pretrain`` section with its ``recipe`` (if any) merged under it.

    Raises:
        InputError: ``stamp`` without a named foundation model as the image encoder.
    """
    section = dict(section or {})
    name = section.get("recipe")
    if name not in RECIPES:  # None, or an unknown name the settings check reports
        return section
    merged = merge_under(RECIPES[name], section)
    if name == "stamp":
        from pastflow.models.foundation import FOUNDATION_MODELS

        image = merged.get("model", {}).get("image", {})
        if image.get("name") not in FOUNDATION_MODELS:
            raise InputError(source, "config key 'pretrain.recipe': stamp fine-tunes a pathology "
                                     "foundation model with LoRA; set pretrain.model.image.name "
                                     f"to one of {', '.join(FOUNDATION_MODELS)} and "
                                     "pretrain.model.image.kwargs.weights to its local file "
                                     "(docs/foundation-models.md)")
    return merged
