"""Every fold's scores in one table (``results/her2st_folds.tsv`` for ``make her2st-folds``).

One row per fold, pastflow method and baseline, from the fold's ``results/predict/
metrics.tsv`` and ``paired.tsv`` (the ``train_top`` genes, the evaluation's headline):
``fold`` (the test sample), ``val``, ``train`` (comma-separated), ``method`` and its mean r
with its 95% interval over the test sample's spots (``r``, ``r_ci_low``, ``r_ci_high``),
``baseline`` and ``baseline_r``, the paired difference ``diff`` with ``ci_low``, ``ci_high``,
and ``beats`` (the paired interval lies above 0).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pastflow.errors import InputError
from pastflow.folds.plan import Fold

FOLD_COLUMNS = ("fold", "val", "train", "method", "r", "r_ci_low", "r_ci_high", "baseline",
                "baseline_r", "diff", "ci_low", "ci_high", "beats")
HEADLINE_GENES = "train_top"


def fold_rows(fold: Fold, metrics_path: str | Path, paired_path: str | Path) -> pd.DataFrame:
    """The table's rows of one finished fold."""
    metrics = pd.read_csv(metrics_path, sep="\t")
    paired = pd.read_csv(paired_path, sep="\t")
    metrics = metrics[(metrics["sample"] == fold.test) & (metrics["genes"] == HEADLINE_GENES)]
    paired = paired[paired["sample"] == fold.test]
    if metrics.empty or paired.empty:
        raise InputError(metrics_path, f"no scores of test sample {fold.test!r}")
    score = metrics.set_index("method")
    rows = []
    for row in paired.itertuples(index=False):
        rows.append({
            "fold": fold.test, "val": fold.val, "train": ",".join(fold.train),
            "method": row.method, "r": score.at[row.method, "mean_pearson_50"],
            "r_ci_low": score.at[row.method, "ci_low"],
            "r_ci_high": score.at[row.method, "ci_high"], "baseline": row.baseline,
            "baseline_r": score.at[row.baseline, "mean_pearson_50"], "diff": row.diff,
            "ci_low": row.ci_low, "ci_high": row.ci_high, "beats": bool(row.ci_low > 0)})
    return pd.DataFrame(rows, columns=list(FOLD_COLUMNS))


def tally(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and baseline: folds, folds beaten (paired interval above 0), mean diff."""
    return (table.groupby(["method", "baseline"], sort=False)
            .agg(folds=("fold", "size"), beaten=("beats", "sum"), mean_diff=("diff", "mean"))
            .reset_index())
