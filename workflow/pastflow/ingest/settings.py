"""Settings of ``pastflow ingest`` (config section ``ingest``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class VisiumHDSettings(Settings):
    """Visium HD: 2 um bins summed into segmented cells, or 8 / 16 um bins as spots."""

    cells: bool = setting(True, "with 2 um bins (binned_outputs/square_002um), segment nuclei "
                                "on the H&E, grow them into cells and sum the bins of each; "
                                "false: read bin_um bins as spots")
    bin_um: int = setting(8, "bin size read as spots when there are no 2 um bins or cells is "
                             "false (the finest present if this one is not)", choices=(8, 16))
    expand_um: float = setting(4.0, "nuclei grow by up to this many microns into cells (2 um "
                                    "bins), never into another cell", minimum=0)
    min_counts: int = setting(10, "cells with fewer counts are dropped (and counted in "
                                  "uns['pastflow'])", minimum=0)


@dataclass(frozen=True)
class HestSettings(Settings):
    """HEST-1k samples (technology ``hest``): Xenium cells or HEST's pseudo-spots."""

    xenium_cells: bool = setting(True, "Xenium samples: the instrument's cells (xenium_seg/ "
                                       "and transcripts/, when both are there); false: HEST's "
                                       "100 um pseudo-spots of st/")
    min_qv: float = setting(20.0, "Xenium cells: transcripts of lower quality (Phred qv) are "
                                  "not counted (20 = Xenium's own cell matrix)", minimum=0)


@dataclass(frozen=True)
class IngestSettings(Settings):
    """Reading vendor data into one SpatialData zarr per sample."""

    mpp: float | None = setting(None, "level-0 microns per pixel for H&E files that do not "
                                      "record it (JPEG/PNG slides)", exclusive_minimum=0,
                                maximum=100)
    max_image_px: int = setting(8192, "H&Es larger than this (px a side) are stored "
                                      "downsampled in the zarr; patches read the original "
                                      "slide", minimum=256)
    max_jpeg_png_px: int = setting(1_000_000_000, "JPEG/PNG slides declaring more pixels "
                                                  "(width x height) are refused before decoding "
                                                  "(they are decoded whole, 3 bytes a pixel)",
                                   minimum=1)
    max_detection_mm2: float = setting(2000.0, "nucleus detection (he_only, Visium HD cells) "
                                               "refuses a slide whose level-0 area is larger "
                                               "(mm^2; a 25 x 75 mm glass slide is 1,875): a "
                                               "wrong mpp or size, stopped before hours of "
                                               "tiles", exclusive_minimum=0)
    visium_hd: VisiumHDSettings = setting(VisiumHDSettings(), "Visium HD: cells or bins")
    hest: HestSettings = setting(HestSettings(), "HEST-1k samples (technology hest)")
