"""Predicted against measured H-scores on the held-out slides (per slide and per region).

Input: the ``hscores.tsv`` of samples with measured expression; a pair is the same sample,
marker and region scored from predicted and from measured expression.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pastflow.errors import InputError
from pastflow.stain.score import HSCORE_COLUMNS, SLIDE

log = logging.getLogger(__name__)

AGREEMENT_COLUMNS = ("marker", "level", "pearson_r", "n")  # contract: hscore_agreement.tsv
DETAIL_COLUMNS = AGREEMENT_COLUMNS + ("spearman_r", "mean_predicted", "mean_measured", "bias",
                                      "loa_lower", "loa_upper", "samples")
MIN_PAIRS = 3  # a correlation of fewer points is not reported (NaN)


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
    (``cells == "measured"``): ``predicted``, ``measured`` (H-scores), ``level`` (``slide`` or
    ``region``) and the cell counts."""
    keys = ["sample", "marker", "region"]
    if "cells" in hscores.columns:  # compare over the same cells (see stain.sample)
        hscores = hscores[hscores["cells"] == "measured"]
    wide = hscores.pivot_table(index=keys, columns="source", values=["hscore", "n_cells"],
                               aggfunc="first")
    if ("hscore", "measured") not in wide.columns or ("hscore", "predicted") not in wide.columns:
        return pd.DataFrame(columns=keys + ["level", "predicted", "measured", "n_predicted",
                                            "n_measured"])
    pairs = pd.DataFrame({
        "predicted": wide[("hscore", "predicted")], "measured": wide[("hscore", "measured")],
        "n_predicted": wide[("n_cells", "predicted")], "n_measured": wide[("n_cells", "measured")],
    }).dropna(subset=["predicted", "measured"]).reset_index()
    pairs.insert(3, "level", np.where(pairs["region"] == SLIDE, "slide", "region"))
    return pairs


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < MIN_PAIRS or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def summarise_agreement(pairs: pd.DataFrame, per_sample: bool = False) -> pd.DataFrame:
    """Per marker and level (and sample, with ``per_sample``): Pearson and Spearman r, n pairs,
    and Bland-Altman bias and 95% limits of agreement (``bias +- 1.96 sd`` of predicted -
    measured). Returns :data:`DETAIL_COLUMNS`; the first four are the ``hscore_agreement.tsv``
    contract (pooled over samples)."""
    rows = []
    keys = ["marker", "level"] + (["sample"] if per_sample else [])
    for key, group in pairs.groupby(keys, sort=True):
        marker, level = key[:2]
        x, y = group["predicted"].to_numpy(float), group["measured"].to_numpy(float)
        diff = x - y
        sd = diff.std(ddof=1) if len(diff) > 1 else np.nan
        rank_r = _pearson(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())
        rows.append({"marker": marker, "level": level, "pearson_r": _pearson(x, y),
                     "n": len(group), "spearman_r": rank_r, "mean_predicted": x.mean(),
                     "mean_measured": y.mean(), "bias": diff.mean(),
                     "loa_lower": diff.mean() - 1.96 * sd, "loa_upper": diff.mean() + 1.96 * sd,
                     "samples": ",".join(sorted(group["sample"].unique()))})
    return pd.DataFrame(rows, columns=list(DETAIL_COLUMNS))


def write_agreement(hscore_paths: Sequence[str | Path], agreement_path: str | Path,
                    details_path: str | Path, bland_altman_path: str | Path,
                    scatter_path: str | Path) -> pd.DataFrame:
    """Pair, summarise and plot; write the contract table, the details (summary plus every
    pair) and both figures, all or nothing. Returns the summary."""
    from pastflow.atomic import atomic_outputs
    from pastflow.stain.plots import plot_agreement_scatter, plot_bland_altman

    pairs = pair_hscores(read_hscores(hscore_paths))
    if pairs.empty:
        raise InputError(None, "no marker was scored from both predicted and measured expression "
                               "in the given H-score tables (were they written with --table?)")
    summary = summarise_agreement(pairs)
    for row in summary.itertuples():
        log.info("%s %s: r = %.3f (n = %d)", row.marker, row.level, row.pearson_r, row.n)
    with atomic_outputs(agreement_path, details_path, bland_altman_path, scatter_path) as tmps:
        summary[list(AGREEMENT_COLUMNS)].to_csv(tmps[0], sep="\t", index=False,
                                                float_format="%.4f")
        # Pooled r mixes between-slide offsets into the within-slide agreement; the
        # per-sample rows separate the two.
        details = pd.concat([summary.assign(table="pooled"),
                             summarise_agreement(pairs, per_sample=True).assign(table="per_sample"),
                             pairs.assign(table="pairs")], ignore_index=True)
        details.to_csv(tmps[1], sep="\t", index=False, float_format="%.4f")
        plot_bland_altman(pairs, summary, tmps[2])
        plot_agreement_scatter(pairs, summary, tmps[3])
    return summary
