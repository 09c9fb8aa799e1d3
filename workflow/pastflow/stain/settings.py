"""Settings of ``pastflow stain-calibrate``, ``pastflow stain``, ``pastflow stain-images`` and
``pastflow stain-agreement`` (config section ``stain``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class StainSettings(Settings):
    """Virtual IHC: marker panel, rendered markers and the region grid."""

    panel: str = setting("resources/ihc_panel.yaml",
                         "marker panel YAML: per IHC marker its genes, stain compartment and "
                         "optional fixed cut-offs (see docs/stain.md)")
    images: list[str] = setting(["Ki67", "CD3", "pan-cytokeratin"],
                                "markers drawn as virtual stain pyramids "
                                "(`results/stain/{sample}/virtual_{marker}.tif`); every panel "
                                "marker gets H-scores")
    grid_um: float = setting(250.0, "side of the square regions H-scores are also given for, "
                                    "microns", exclusive_minimum=0)
    min_region_cells: int = setting(20, "regions with fewer cells get no H-score", minimum=1)
    unit_um: float | None = setting(None, "cell/spot diameter of the stain blobs in microns "
                                          "(null = the sample's own unit, else 10)",
                                    exclusive_minimum=0)
    bootstrap: int = setting(1000, "resamples of the slides or regions for the 95% intervals "
                                   "of the virtual vs measured H-score r and kappa", minimum=10)
    seed: int = setting(0, "seed of those resamples", minimum=0)
