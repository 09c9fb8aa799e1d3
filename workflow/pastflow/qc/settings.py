"""Settings of ``pastflow qc`` (config section ``qc``)."""

from __future__ import annotations

from dataclasses import dataclass

from pastflow.settings import Settings, setting


@dataclass(frozen=True)
class QCSettings(Settings):
    """Cell and gene filters and highly variable genes (scanpy)."""

    min_counts: int = setting(10, "cells with fewer total counts are dropped", minimum=0)
    min_genes: int = setting(5, "cells with fewer detected genes are dropped", minimum=0)
    min_cells: int = setting(3, "genes detected in fewer cells are dropped", minimum=0)
    n_top_genes: int = setting(200, "highly variable genes flagged (Pearson residuals of raw "
                                    "counts)", minimum=10)
    target_sum: float = setting(1e4, "every cell's counts are scaled to this total before "
                                     "log1p (counts per 10,000): one scale on every slide, "
                                     "whatever its sequencing depth", exclusive_minimum=0)
