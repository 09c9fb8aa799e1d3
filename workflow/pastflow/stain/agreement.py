"""Predicted against measured H-scores on the held-out slides (per slide and per region).

Input: the ``hscores.tsv`` of samples with measured expression; a pair is the same sample,
marker and region scored from predicted and from measured expression.

Per marker and level (slides or regions): Pearson r of the H-scores, and the concordance of
their classes, Cohen's kappa with quadratic weights, as pathologists compare IHC scores. A
slide's or region's class is the highest level that more than 10% of its cells reach
(:func:`region_class`; the ASCO/CAP HER2 convention of scoring a slide by the intensity of
more than 10% of its cells). Both get a 95%
percentile bootstrap interval over the pairs (the product's one bootstrap,
:func:`pastflow.predict.metrics.bootstrap_pearson`). A value that is undefined (too few pairs,
a constant H-score, one class shared by every pair) is NaN and ``reason`` says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pastflow.errors import InputError
from pastflow.predict.metrics import bootstrap_pearson, percentile_interval, quadratic_kappa
from pastflow.stain.score import HSCORE_COLUMNS, SLIDE

log = logging.getLogger(__name__)

AGREEMENT_COLUMNS = ("marker", "level", "pearson_r", "n")  # contract: hscore_agreement.tsv
# Written after the contract's columns in hscore_agreement.tsv.
INTERVAL_COLUMNS = ("pearson_ci_low", "pearson_ci_high", "kappa", "kappa_ci_low",
                    "kappa_ci_high", "reason")
DETAIL_COLUMNS = AGREEMENT_COLUMNS + INTERVAL_COLUMNS + (
    "spearman_r", "mean_predicted", "mean_measured", "bias", "loa_lower", "loa_upper", "samples")
MIN_PAIRS = 3  # a correlation of fewer points is not reported (NaN, with the reason)
CLASS_SHARE = 10.0  # % of a region's cells that must reach a level for it to take that class


def read_hscores(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate ``hscores.tsv`` files; InputError naming a file that is not one."""
    tables = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "H-score table not found")
        table = pd.read_csv(path, sep="\t", dtype={"region": str, "sample": str})
        missing = [c for c in HSCORE_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(path, f"missing columns {missing}")
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=HSCORE_COLUMNS)


def pair_hscores(hscores: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, marker, region) scored both ways over the same cells
    (``cells == "measured"``): ``predicted``, ``measured`` (H-scores), ``level`` (``slide``,
    ``region`` or ``core``) and the cell counts."""
    keys = ["sample", "marker", "region"]
    if "cells" in hscores.columns:  # compare over the same cells (see stain.sample)
        hscores = hscores[hscores["cells"] == "measured"]
    hscores = hscores.assign(hclass=region_class(hscores["pct_1"], hscores["pct_2"],
                                                 hscores["pct_3"]))
    wide = hscores.pivot_table(index=keys, columns="source",
                               values=["hscore", "n_cells", "hclass"], aggfunc="first")
    if ("hscore", "measured") not in wide.columns or ("hscore", "predicted") not in wide.columns:
        return pd.DataFrame(columns=keys + ["level", "predicted", "measured", "n_predicted",
                                            "n_measured", "class_predicted", "class_measured"])
    pairs = pd.DataFrame({
        "predicted": wide[("hscore", "predicted")], "measured": wide[("hscore", "measured")],
        "n_predicted": wide[("n_cells", "predicted")], "n_measured": wide[("n_cells", "measured")],
        "class_predicted": wide[("hclass", "predicted")],
        "class_measured": wide[("hclass", "measured")],
    }).dropna(subset=["predicted", "measured"]).reset_index()
    # The level each file wrote (slide, region, or a tissue microarray's core); tables
    # written before the column existed: slide or region.
    level = (hscores.groupby(keys)["level"].first().reindex(
        pd.MultiIndex.from_frame(pairs[keys])).to_numpy() if "level" in hscores.columns
        else np.where(pairs["region"] == SLIDE, "slide", "region"))
    pairs.insert(3, "level", level)
    return pairs


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < MIN_PAIRS or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def region_class(pct_1, pct_2, pct_3) -> np.ndarray:
    """The 0/1+/2+/3+ class (0..3) of regions from their % of cells at each level: the highest
    level that more than :data:`CLASS_SHARE` % of the cells reach (0: none does)."""
    pct_1, pct_2, pct_3 = (np.nan_to_num(np.asarray(p, np.float64)) for p in (pct_1, pct_2, pct_3))
    reached = np.stack([pct_1 + pct_2 + pct_3, pct_2 + pct_3, pct_3], axis=-1)
    return (reached > CLASS_SHARE).sum(axis=-1).astype(np.int64)


def _constant(name: str, values: np.ndarray, unit: str) -> str:
    return f"{name} {values[0]:g} in every {unit}"


def agreement_values(predicted: np.ndarray, measured: np.ndarray, predicted_class: np.ndarray,
                     measured_class: np.ndarray, unit: str, *, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """Pearson r of paired H-scores and quadratic kappa of their classes (:func:`region_class`)
    with 95% bootstrap intervals (resampling the pairs), and ``reason``: why a value is NaN
    (empty when none is). ``unit`` names a pair in the reason (``slide`` or ``region``)."""
    x, y = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    out = dict.fromkeys(("pearson_r",) + INTERVAL_COLUMNS[:-1], np.nan)
    if len(x) < MIN_PAIRS:
        out["reason"] = (f"{len(x)} {unit}{'s' if len(x) != 1 else ''} scored both ways: too "
                         f"few for r or kappa (needs {MIN_PAIRS})")
        return out
    reasons = []
    flat_x, flat_y = bool(np.ptp(x) == 0), bool(np.ptp(y) == 0)
    if flat_x or flat_y:
        reasons.append("r undefined: " + " and ".join(
            [_constant("measured H-score", y, unit)] * flat_y
            + [_constant("predicted H-score", x, unit)] * flat_x))
    else:
        out["pearson_r"] = _pearson(x, y)
        draws = bootstrap_pearson(y[:, None], {"r": x[:, None]}, n_boot, seed)["r"][:, 0]
        out["pearson_ci_low"], out["pearson_ci_high"] = percentile_interval(draws)
    cx, cy = np.asarray(predicted_class, np.int64), np.asarray(measured_class, np.int64)
    kappa = quadratic_kappa(cy, cx)
    if np.isnan(kappa):
        reasons.append(f"kappa undefined: class {cy[0]} in every {unit}, measured and "
                       "predicted (agreement, but none beyond chance to measure)")
    else:
        out["kappa"] = kappa
        draws = bootstrap_pearson(cy[:, None], {"k": cx[:, None]}, n_boot, seed,
                                  statistic="quadratic_kappa")["k"][:, 0]
        out["kappa_ci_low"], out["kappa_ci_high"] = percentile_interval(draws)
    out["reason"] = "; ".join(reasons)
    return out


def summarise_agreement(pairs: pd.DataFrame, per_sample: bool = False, *, n_boot: int = 1000,
                        seed: int = 0) -> pd.DataFrame:
    """Per marker and level (and sample, with ``per_sample``): Pearson r and quadratic kappa
    with their 95% intervals and the reason for any NaN (:func:`agreement_values`, ``n_boot``
    resamples), Spearman r, n pairs, and Bland-Altman bias and 95% limits of agreement
    (``bias +- 1.96 sd`` of predicted - measured). Returns :data:`DETAIL_COLUMNS`; the first
    four are the ``hscore_agreement.tsv`` contract (pooled over samples)."""
    rows = []
    keys = ["marker", "level"] + (["sample"] if per_sample else [])
    for key, group in pairs.groupby(keys, sort=True):
        marker, level = key[:2]
        x, y = group["predicted"].to_numpy(float), group["measured"].to_numpy(float)
        diff = x - y
        sd = diff.std(ddof=1) if len(diff) > 1 else np.nan
        rank_r = _pearson(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())
        values = agreement_values(x, y, group["class_predicted"], group["class_measured"],
                                  str(level), n_boot=n_boot, seed=seed)
        rows.append({"marker": marker, "level": level, **values,
                     "n": len(group), "spearman_r": rank_r, "mean_predicted": x.mean(),
                     "mean_measured": y.mean(), "bias": diff.mean(),
                     "loa_lower": diff.mean() - 1.96 * sd, "loa_upper": diff.mean() + 1.96 * sd,
                     "samples": ",".join(sorted(group["sample"].unique()))})
    return pd.DataFrame(rows, columns=list(DETAIL_COLUMNS))


def write_agreement(hscore_paths: Sequence[str | Path], agreement_path: str | Path,
                    details_path: str | Path, bland_altman_path: str | Path,
                    scatter_path: str | Path, *, n_boot: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """Pair, summarise and plot; write the agreement table (the contract's columns, then
    :data:`INTERVAL_COLUMNS`), the details (summary plus every pair) and both figures, all or
    nothing. Returns the summary."""
    from pastflow.atomic import atomic_outputs
    from pastflow.stain.plots import plot_agreement_scatter, plot_bland_altman

    pairs = pair_hscores(read_hscores(hscore_paths))
    if pairs.empty:
        raise InputError(None, "no marker was scored from both predicted and measured expression "
                               "in the given H-score tables (were they written with --table?)")
    summary = summarise_agreement(pairs, n_boot=n_boot, seed=seed)
    for row in summary.itertuples():
        log.info("%s %s: r = %.3f, kappa = %.3f (n = %d)%s", row.marker, row.level,
                 row.pearson_r, row.kappa, row.n, f": {row.reason}" if row.reason else "")
    with atomic_outputs(agreement_path, details_path, bland_altman_path, scatter_path) as tmps:
        summary[list(AGREEMENT_COLUMNS + INTERVAL_COLUMNS)].to_csv(
            tmps[0], sep="\t", index=False, float_format="%.4f")
        # Pooled r mixes between-slide offsets into the within-slide agreement; the
        # per-sample rows separate the two.
        details = pd.concat([summary.assign(table="pooled"),
                             summarise_agreement(pairs, per_sample=True, n_boot=n_boot,
                                                 seed=seed).assign(table="per_sample"),
                             pairs.assign(table="pairs")], ignore_index=True)
        details.to_csv(tmps[1], sep="\t", index=False, float_format="%.4f")
        plot_bland_altman(pairs, summary, tmps[2])
        plot_agreement_scatter(pairs, summary, tmps[3])
    return summary
