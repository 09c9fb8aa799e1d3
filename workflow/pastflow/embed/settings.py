"""Settings of ``pastflow embed`` (config section ``embed``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.foundation_inputs import FOUNDATION_INPUTS
from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class EmbedSettings(Settings):
    """Embedding every cell of a sample with the pretrained model."""

    batch_size: int = setting(256, "cells per forward pass", minimum=1)
    random_seed: int = setting(0, "seed of the random-weight baseline encoder", minimum=0)
    device: str | None = setting(None, "null or auto: cuda when torch sees a GPU (every "
                                       "visible one), else cpu, but a job given GPUs fails "
                                       "without CUDA; cuda, cuda:N, cpu, or another torch "
                                       "device")
    num_workers: int | None = setting(None, "patch-reading worker processes per GPU (null = "
                                            "from the job's CPUs on GPUs, 0 on CPU)", minimum=0)
    probe_encoders: dict[str, str] = setting(
        {}, "named foundation models run frozen over every cell and scored by the same ridge "
            "probe as pastflow (method <name>_ridge), name: local weights file, e.g. "
            "resnet50_imagenet: /models/resnet50-0676ba61.pth (the HEST-Benchmark baseline)")

    def check(self, fail) -> None:
        for name in self.probe_encoders:
            if name not in FOUNDATION_INPUTS:
                fail("probe_encoders", f"{name!r} is not a named foundation model; known: "
                                       f"{', '.join(FOUNDATION_INPUTS)}")
