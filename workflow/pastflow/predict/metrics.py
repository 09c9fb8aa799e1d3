"""Per-gene agreement between measured and predicted expression; pure numpy.

Conventions (HEST-Benchmark, Jaume et al. 2024): expression is log1p-normalised, the score of
a gene is the Pearson correlation over cells (or spots) between measured and predicted values,
and a method's score is the mean over the 50 most variable genes.

A constant vector has no Pearson correlation (0 / 0). Here it is defined as **0**: a method
that predicts the same value for every cell (the mean-expression baseline, or a model that has
collapsed) carries no information about which cells express the gene, and 0 keeps the mean
over genes defined instead of turning it into NaN.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Below this (relative to the vector's scale) a centred vector counts as constant: float32
# round-off of a constant prediction must not become a spurious correlation of +-1.
_CONSTANT_RTOL = 1e-6


def pearson_per_gene(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Pearson r of every column: ``(n_cells, n_genes)`` x 2 -> ``float64 (n_genes,)``.

    A column that is constant in either input gets r = 0 (see the module docstring). Raises
    ValueError when the shapes differ, there are fewer than 2 rows, or a value is not finite.
    """
    measured = np.asarray(measured, np.float64)
    predicted = np.asarray(predicted, np.float64)
    if measured.ndim == 1:
        measured, predicted = measured[:, None], predicted.reshape(-1, 1)
    if measured.shape != predicted.shape:
        raise ValueError(f"measured {measured.shape} and predicted {predicted.shape} differ")
    if measured.shape[0] < 2:
        raise ValueError("a correlation needs at least 2 cells")
    if not (np.isfinite(measured).all() and np.isfinite(predicted).all()):
        raise ValueError("measured or predicted expression holds NaN or infinite values")
    a = measured - measured.mean(axis=0)
    b = predicted - predicted.mean(axis=0)
    norm_a, norm_b = np.sqrt((a * a).sum(axis=0)), np.sqrt((b * b).sum(axis=0))
    scale_a = np.abs(measured).max(axis=0) * np.sqrt(len(a))
    scale_b = np.abs(predicted).max(axis=0) * np.sqrt(len(b))
    varies = (norm_a > _CONSTANT_RTOL * scale_a) & (norm_b > _CONSTANT_RTOL * scale_b)
    r = np.zeros(a.shape[1])
    r[varies] = (a[:, varies] * b[:, varies]).sum(axis=0) / (norm_a[varies] * norm_b[varies])
    return np.clip(r, -1.0, 1.0)


def most_variable_genes(expression: np.ndarray, genes: Sequence[str], n: int = 50) -> list[str]:
    """The ``n`` genes of highest variance over cells, most variable first (ties: gene order).

    ``expression`` is ``(n_cells, n_genes)`` log1p-normalised, columns named by ``genes``.
    Fewer than ``n`` genes: all of them, ranked.
    """
    expression = np.asarray(expression, np.float64)
    if expression.shape[1] != len(genes):
        raise ValueError(f"{expression.shape[1]} columns but {len(genes)} gene names")
    return highest_variance_genes(expression.var(axis=0), genes, n)


def highest_variance_genes(variance: np.ndarray, genes: Sequence[str], n: int = 50) -> list[str]:
    """The ``n`` genes of highest ``variance`` (one value per gene), highest first (ties: gene
    order)."""
    variance = np.asarray(variance, np.float64)
    order = np.lexsort((np.arange(len(genes)), -variance))  # stable: ties keep gene order
    return [genes[i] for i in order[:n]]


def quadratic_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights between two raters' ordinal classes ``(n,)``
    (e.g. IHC 0/1+/2+/3+ as 0..3): ``2 cov / (var_a + var_b + (mean_a - mean_b)^2)`` with
    1/n moments, which equals ``1 - sum w_ij O_ij / sum w_ij E_ij`` for ``w_ij = (i - j)^2``.
    NaN when undefined: both raters give one and the same class to every item."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denominator = a.var() + b.var() + (a.mean() - b.mean()) ** 2
    if denominator == 0:
        return float("nan")
    return float(2 * np.mean((a - a.mean()) * (b - b.mean())) / denominator)


STATISTICS = ("pearson", "quadratic_kappa")


def bootstrap_pearson(measured: np.ndarray, predictions: dict[str, np.ndarray],
                      n_boot: int, seed: int, chunk: int = 50,
                      statistic: str = "pearson") -> dict[str, np.ndarray]:
    """Pearson r of every column, for each method, on ``n_boot`` resamples of the rows
    (cells or spots, drawn with replacement; the same draws for every method, so differences
    between methods are paired). Returns method -> ``float64 (n_boot, n_genes)``.

    A resample is a row of counts ``w`` (how often each cell was drawn), so its moments are
    matrix products ``w @ x``: ``chunk`` resamples at a time, no copy of the data per draw.
    A column constant in a resample gets r = 0, as in :func:`pearson_per_gene`.

    ``statistic="quadratic_kappa"``: :func:`quadratic_kappa` of ordinal classes instead, from
    the same moments (0 in a resample where both sides are one and the same class).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
    measured = np.asarray(measured, np.float64)
    n = len(measured)
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
    out = {}
    for method, predicted in predictions.items():
        predicted = np.asarray(predicted, np.float64)
        columns = (measured, predicted, measured * measured, predicted * predicted,
                   measured * predicted)
        draws = []
        for start in range(0, n_boot, chunk):
            w = weights[start:start + chunk].astype(np.float64) / n
            mx, my, mxx, myy, mxy = (w @ c for c in columns)
            var_x, var_y = mxx - mx * mx, myy - my * my
            floor_x = (_CONSTANT_RTOL * np.abs(measured).max(axis=0)) ** 2
            floor_y = (_CONSTANT_RTOL * np.abs(predicted).max(axis=0)) ** 2
            if statistic == "quadratic_kappa":
                spread = var_x + var_y + (mx - my) ** 2
                defined = spread > floor_x + floor_y  # not round-off of one shared class
                kappa = 2 * (mxy - mx * my) / np.where(defined, spread, 1.0)
                draws.append(np.clip(np.where(defined, kappa, 0.0), -1.0, 1.0))
                continue
            varies = (var_x > floor_x) & (var_y > floor_y)
            r = np.where(varies, (mxy - mx * my) / np.sqrt(np.where(varies, var_x * var_y, 1.0)), 0.0)
            draws.append(np.clip(r, -1.0, 1.0))
        out[method] = np.concatenate(draws)
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values``."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def percentile_intervals(draws: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Per column of bootstrap ``draws (n_boot, k)``: the central ``level`` percentile
    interval, as ``(low (k,), high (k,))``."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return low, high
