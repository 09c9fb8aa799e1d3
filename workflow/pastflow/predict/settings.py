"""Settings of ``pastflow predict`` (section ``predict``) and ``pastflow evaluate``
(section ``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class PredictSettings(Settings):
    """Expression predicted from the H&E by the trained head."""

    target_sum: float | None = setting(
        None, "library scale of nb/poisson predictions (null = the library the model's "
              "genes hold in the sample's QC table, else qc.target_sum)", exclusive_minimum=0)


@dataclass(frozen=True)
class EvaluateSettings(Settings):
    """Scoring predicted expression on the test samples (HEST-Benchmark ridge protocol)."""

    n_genes: int = setting(50, "genes scored: the most variable over the training samples' "
                               "cells (headline), and, reported too, of each test sample "
                               "(HEST convention)", minimum=1)
    pca_components: int = setting(256, "PCA components of the embeddings before the ridge "
                                       "probe (HEST: 256)", minimum=1)
    seed: int = setting(0, "seed of PCA, of the bootstrap and of the leave-one-patient-out "
                           "run", minimum=0)
    bootstrap: int = setting(1000, "resamples of a test sample's cells (or spots) for the 95% "
                                   "intervals of mean r and of paired differences", minimum=10)
    markers: list[str] = setting(["EPCAM", "COL1A1", "CD3D", "MS4A1", "CD68", "PECAM1"],
                                 "genes drawn as maps and listed on their own")
    figure_samples: int = setting(6, "per-sample figures for the first N test samples (all "
                                     "are scored)", minimum=0)
