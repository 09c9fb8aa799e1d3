"""The HEST-Benchmark linear probe: expression from frozen image embeddings.

Protocol (Jaume et al., HEST-1k, NeurIPS 2024; ``hest/bench/trainer.py`` and
``benchmark.py``): standardise the embeddings (fitted on the training cells), PCA to 256
components, ridge regression with ``alpha = 100 / (d * n_genes)`` (``d`` = the number of
components), one fit for all target genes, solver ``lsqr``. HEST fits without an intercept;
the PCA components are centred on the training cells, so an intercept changes no coefficient
(and no Pearson r), and it is fitted here so that the predictions sit at the expression's level
and can be drawn on the same colour scale as the measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# HEST's PCA width; config evaluate.pca_components defaults to it.
HEST_COMPONENTS = 256


@dataclass(frozen=True)
class RidgeProbe:
    """A fitted probe: ``predict(embeddings (n, D)) -> expression (n, n_genes)``."""

    pipeline: object  # sklearn Pipeline: StandardScaler -> PCA -> Ridge
    n_components: int
    alpha: float

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self.pipeline.predict(np.asarray(embeddings, np.float64))


def fit_hest_ridge(embeddings: np.ndarray, expression: np.ndarray, *,
                   n_components: int, seed: int) -> RidgeProbe:
    """Fit the probe on training cells: ``embeddings (n, D)`` -> ``expression (n, G)``.

    ``n_components`` is capped at ``min(D, n - 1)``: PCA cannot return more components than
    that (a 128-wide embedding keeps all 128). ``alpha = 100 / (d * G)`` with the ``d`` used.

    Raises:
        ValueError: row counts differ, fewer than 3 cells, or non-finite values.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    embeddings = np.asarray(embeddings, np.float64)
    expression = np.asarray(expression, np.float64)
    if embeddings.ndim != 2 or expression.ndim != 2 or len(embeddings) != len(expression):
        raise ValueError(f"embeddings {embeddings.shape} and expression {expression.shape} "
                         "need the same number of rows")
    if len(embeddings) < 3:
        raise ValueError(f"a probe needs at least 3 training cells, got {len(embeddings)}")
    if not (np.isfinite(embeddings).all() and np.isfinite(expression).all()):
        raise ValueError("embeddings or expression hold NaN or infinite values")
    d = int(min(n_components, embeddings.shape[1], len(embeddings) - 1))
    alpha = 100.0 / (d * expression.shape[1])
    pipeline = Pipeline([
        ("scale", StandardScaler()),
        ("pca", PCA(n_components=d, random_state=seed)),
        ("ridge", Ridge(alpha=alpha, solver="lsqr", max_iter=1000, random_state=seed)),
    ])
    pipeline.fit(embeddings, expression)
    log.debug("HEST ridge: %d cells, %d -> %d components, %d genes, alpha %.3g",
              len(embeddings), embeddings.shape[1], d, expression.shape[1], alpha)
    return RidgeProbe(pipeline, d, alpha)
