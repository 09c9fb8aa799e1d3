"""The ``embed`` stage: a trained model's embeddings of every cell of a sample.

- ``encode.py``: :func:`embed_images` (patch store -> image embeddings, with spatial context
  when the model has it), :func:`embed_expression` (QC table -> expression embeddings),
  :func:`random_model` (the same architecture with seeded random weights, the baseline);
- ``sample.py``: :func:`embed_sample`, one sample -> ``results/embed/{sample}.h5ad``
  (``obsm`` ``X_image``, ``X_image_random``, ``X_expression``);
- ``cli.py``: ``pastflow embed``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "embed_images": "pastflow.embed.encode",
    "embed_expression": "pastflow.embed.encode",
    "random_model": "pastflow.embed.encode",
    "embed_sample": "pastflow.embed.sample",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that `pastflow --help` (which imports pastflow.embed.cli) loads no torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
