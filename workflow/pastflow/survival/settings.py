"""Settings of the survival stage (config section ``survival``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class SurvivalSettings(Settings):
    """Cross-validated Cox models and attention-MIL (sized for ~50 patients).

    ``pca_components`` and ``clusters`` are fixed values sized for tens of patients, not
    tuned on a score (a choice by the cross-validated c-index would be a choice on the
    patients it is reported on).

    ``penalizers``: lifelines adds penalizer * ||beta||^2 / 2 to the mean negative log partial
    likelihood of standardised features; 0.1-3 spans "mildly shrunk" to "coefficients near
    zero" for tens of patients and ~5-30 features. Each value costs ``inner_folds`` fits in
    every outer fold of every model.
    """

    clinical: str | None = setting(None, "clinical TSV: `patient`, `os_time`, `os_event` (0/1) "
                                         "and covariates; null = the simulated cohort's table")
    min_patients: int = setting(20, "fewer patients: no survival stage", minimum=4)
    use_hscores: bool = setting(True, "virtual IHC slide H-scores among the molecular "
                                      "features")
    folds: int = setting(5, "outer cross-validation folds (by patient, stratified on the "
                            "event)", minimum=2)
    repeats: int = setting(3, "repeats of the outer cross-validation (c-index = mean over "
                              "repeats)", minimum=1)
    inner_folds: int = setting(3, "inner folds choosing the Cox penalizer", minimum=2)
    penalizers: list[float] = setting([0.1, 0.3, 1.0, 3.0], "penalizer grid (lifelines "
                                      "`CoxPHFitter(penalizer=...)`, ridge)",
                                      exclusive_minimum=0)
    pca_components: int = setting(4, "PCA components of the mean image embedding, fitted "
                                     "inside each training fold", minimum=1)
    clusters: int = setting(8, "k-means clusters of cell image embeddings (composition "
                               "features)", minimum=2)
    bootstrap: int = setting(1000, "bootstrap resamples of patients for the c-index 95% "
                                   "interval", minimum=100)
    mil_epochs: int = setting(150, "epochs of the attention-MIL model over cell embeddings "
                                   "(0 = no MIL model)", minimum=0)
    mil_cells: int = setting(256, "cells sampled per patient per MIL step", minimum=1)
    seed: int = setting(0, "seed of folds, k-means, bootstrap and MIL", minimum=0)

    def check(self, fail) -> None:
        if not self.penalizers:
            fail("penalizers", "give at least one penalizer")
