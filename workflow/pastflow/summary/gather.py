"""Gather the key numbers of a run: samples and cells, 50-gene Pearson r per method,
survival c-index per model, virtual-IHC H-score agreement per marker.

Each stage's table is optional (the summary covers the stages that ran); a table that
exists but lacks its contract's columns is an error naming it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pastflow.atomic import atomic_outputs
from pastflow.errors import InputError

log = logging.getLogger(__name__)

CONTRACTS = {
    "metrics": ["sample", "method", "mean_pearson_50"],
    "cindex": ["model", "cindex", "ci_low", "ci_high"],
    "agreement": ["marker", "level", "pearson_r", "n"],
}


def _read_result_tsv(path: str | Path | None, kind: str) -> pd.DataFrame | None:
    """A stage's result table with the columns of ``CONTRACTS[kind]``; None when not given."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found")
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in CONTRACTS[kind] if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    return table


def count_cells(stores: list[str | Path]) -> int:
    """Cells (or spots) inside the slides of the patch stores."""
    total = 0
    for store in stores:
        try:
            with h5py.File(store, "r") as f:
                total += int(np.asarray(f["cells/in_slide"]).sum())
        except (OSError, KeyError) as err:
            raise InputError(store, f"not a pastflow patch store: {err}") from None
    return total


def summarise_run(technologies: list[str], stores: list[str | Path], metrics=None, cindex=None,
                  agreement=None) -> dict:
    """The key numbers as a JSON-ready dict (sections only for the stages given).

    ``technologies``: one per sample of the sheet; ``stores``: every sample's patch store;
    ``metrics``/``cindex``/``agreement``: ``results/predict/metrics.tsv``,
    ``results/survival/cindex.tsv``, ``results/stain/hscore_agreement.tsv``.
    """
    summary = {
        "samples": len(technologies),
        "technologies": dict(sorted(Counter(technologies).items())),
        "cells": count_cells(stores),
    }
    table = _read_result_tsv(metrics, "metrics")
    if table is not None:
        per_method = table.groupby("method")["mean_pearson_50"]
        summary["pearson_50"] = {
            "test_samples": int(table["sample"].nunique()),
            "mean_by_method": {m: round(float(v), 3) for m, v in per_method.mean().items()},
        }
    table = _read_result_tsv(cindex, "cindex")
    if table is not None:
        summary["cindex"] = {
            row.model: {"cindex": round(float(row.cindex), 3), "ci_low": round(float(row.ci_low), 3),
                        "ci_high": round(float(row.ci_high), 3)}
            for row in table.itertuples()
        }
    table = _read_result_tsv(agreement, "agreement")
    if table is not None:
        summary["hscore_agreement"] = {
            f"{row.marker} ({row.level})": {"pearson_r": round(float(row.pearson_r), 3), "n": int(row.n)}
            for row in table.itertuples()
        }
    return summary


def summary_rows(summary: dict) -> pd.DataFrame:
    """The summary as a long table: ``section``, ``item``, ``value``."""
    rows = [("run", "samples", summary["samples"]), ("run", "cells", summary["cells"])]
    rows += [("technologies", k, v) for k, v in summary["technologies"].items()]
    for method, r in summary.get("pearson_50", {}).get("mean_by_method", {}).items():
        rows.append(("50-gene mean Pearson r (test samples)", method, r))
    for model, values in summary.get("cindex", {}).items():
        rows.append(("c-index (95% interval)", model,
                     f"{values['cindex']:.3f} ({values['ci_low']:.3f}-{values['ci_high']:.3f})"))
    for marker, values in summary.get("hscore_agreement", {}).items():
        rows.append(("H-score agreement r (n)", marker, f"{values['pearson_r']:.3f} ({values['n']})"))
    return pd.DataFrame(rows, columns=["section", "item", "value"])


def write_summary(summary: dict, json_path: str | Path, tsv_path: str | Path) -> None:
    """Write both files together (atomically)."""
    with atomic_outputs(json_path, tsv_path) as (tmp_json, tmp_tsv):
        Path(tmp_json).write_text(json.dumps(summary, indent=2) + "\n")
        summary_rows(summary).to_csv(tmp_tsv, sep="\t", index=False)
    log.info("summary: %d samples, %d cells%s", summary["samples"], summary["cells"],
             "".join(f", {k}" for k in ("pearson_50", "cindex", "hscore_agreement") if k in summary))
