"""Settings of ``pastflow embed`` (config section ``embed``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class EmbedSettings(Settings):
    """Embedding every cell of a sample with the pretrained model."""

    batch_size: int = setting(256, "cells per forward pass", minimum=1)
    random_seed: int = setting(0, "seed of the random-weight baseline encoder", minimum=0)
    device: str | None = setting(None, "torch device (null = cuda when available, else cpu)")
