"""Settings of ``pastflow ingest`` (config section ``ingest``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class IngestSettings(Settings):
    """Reading vendor data into one SpatialData zarr per sample."""

    mpp: float | None = setting(None, "level-0 microns per pixel for H&E files that do not "
                                      "record it (JPEG/PNG slides)", exclusive_minimum=0)
    max_image_px: int = setting(8192, "H&Es larger than this (px a side) are stored "
                                      "downsampled in the zarr; patches read the original "
                                      "slide", minimum=256)
