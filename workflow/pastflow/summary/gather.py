"""Gather the key numbers of a run: samples and cells, expression-from-H&E Pearson r per
test sample and method (and per technology), survival c-index per model, virtual-IHC
H-score agreement per marker and level.

Nothing is averaged across samples of different tissues or technologies: expression
metrics are given per test sample; a technology's row is that sample's value when the
technology has one test sample, else the median with the min-max range and the sample
count, labelled as such. The c-index and H-score agreement are cohort-level by design and
say their level and n.

Each stage's table is optional (the summary covers the stages that ran); a table that
exists but lacks its contract's columns is an error naming it.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pastflow.atomic import atomic_outputs
from pastflow.errors import InputError
from pastflow.predict.evaluate import GENE_SELECTIONS

log = logging.getLogger(__name__)

CONTRACTS = {
    "metrics": ["sample", "method", "mean_pearson_50"],
    "cindex": ["model", "cindex", "ci_low", "ci_high"],
    "agreement": ["marker", "level", "pearson_r", "n"],
    "outcomes": ["patient", "os_event"],
    "paired": ["sample", "method", "baseline", "diff", "ci_low", "ci_high"],
}

#: Expression metrics of ``metrics.tsv`` (column -> summary name, description); the first
#: is required, the others are summarised when present.
EXPRESSION_METRICS = {
    "mean_pearson_50": ("pearson_50", "mean Pearson r over the 50 genes most variable over the "
                                      "training cells (chosen without the test sample)"),
    "mean_pearson_markers": ("pearson_markers", "mean Pearson r over the marker genes scored"),
}
#: The method shown first (the others are baselines).
HEAD = "pastflow_head"

#: ``summary.tsv`` columns, in order (documented in ``workflow/report/summary.rst``).
COLUMNS = ["section", "level", "sample", "technology", "method", "marker", "metric",
           "statistic", "value", "low", "high", "interval", "n", "n_of", "reason"]


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


def _r(value) -> float | None:
    """A correlation rounded for the summary; None (JSON null) when missing."""
    value = float(value)
    return None if math.isnan(value) else round(value, 3)


def _ordered_methods(methods) -> list[str]:
    """The head first, then the baselines in the table's order."""
    methods = list(dict.fromkeys(methods))
    return sorted(methods, key=lambda m: m != HEAD)


def summarise_expression(table: pd.DataFrame, technology_of: dict[str, str],
                         source: str | Path = "metrics.tsv") -> dict:
    """Per test sample and method, and per technology, every metric of
    :data:`EXPRESSION_METRICS` in ``table`` (``metrics.tsv``), over the headline gene
    selection (rows whose ``genes`` is ``train_top``; tables written before the column have
    one selection).

    ``technology_of`` maps every sample of the sheet to its technology; a test sample
    missing from it is an error naming ``source``.
    """
    if "genes" in table.columns:
        table = table[table["genes"] == GENE_SELECTIONS[0]]
    unknown = sorted(set(table["sample"].astype(str)) - set(technology_of))
    if unknown:
        raise InputError(source, f"sample(s) not in the sample sheet: {', '.join(unknown)}")
    table = table.assign(sample=table["sample"].astype(str))
    table["technology"] = table["sample"].map(technology_of)
    metrics = {name: (column, text) for column, (name, text) in EXPRESSION_METRICS.items()
               if column in table.columns}
    methods = _ordered_methods(table["method"])
    samples = list(dict.fromkeys(table.sort_values(["technology", "sample"], kind="stable")["sample"]))

    by_sample = []
    for sample in samples:
        part = table[table["sample"] == sample].set_index("method")
        entry = {"sample": sample, "technology": technology_of[sample]}
        if "n_cells" in part.columns:
            entry["n_cells"] = int(part["n_cells"].max())
        if "n_genes" in part.columns:
            entry["n_genes"] = int(part["n_genes"].max())
        for name, (column, _) in metrics.items():
            entry[name] = {m: _r(part.loc[m, column]) for m in methods if m in part.index}
        if {"ci_low", "ci_high"} <= set(part.columns):  # 95% bootstrap interval of pearson_50
            entry["pearson_50_ci"] = {m: [_r(part.loc[m, "ci_low"]), _r(part.loc[m, "ci_high"])]
                                      for m in methods if m in part.index}
        by_sample.append(entry)

    by_technology = []
    for technology, part in table.groupby("technology", sort=True):
        n_samples = int(part["sample"].nunique())
        entry = {"technology": technology, "test_samples": n_samples,
                 "statistic": "value" if n_samples == 1 else "median"}
        for name, (column, _) in metrics.items():
            entry[name] = {}
            for method in methods:
                values = part.loc[part["method"] == method, column].dropna().astype(float)
                if values.empty:
                    continue
                if len(values) == 1:
                    entry[name][method] = {"value": _r(values.iloc[0]), "n": 1}
                else:
                    entry[name][method] = {"value": _r(values.median()), "min": _r(values.min()),
                                           "max": _r(values.max()), "n": int(len(values))}
        by_technology.append(entry)

    return {
        "test_samples": len(samples),
        "methods": methods,
        "metrics": {name: text for name, (_, text) in metrics.items()},
        "by_sample": by_sample,
        "by_technology": by_technology,
    }


def strongest_baselines(expression: dict, paired: pd.DataFrame) -> None:
    """Give each test sample of ``expression`` (:func:`summarise_expression`) the head's
    paired difference to its strongest baseline (the baseline with the highest ``pearson_50``
    on that sample: the comparison least favourable to pastflow) from ``paired.tsv``:
    ``entry["versus_baseline"] = {baseline, baseline_r, diff, ci_low, ci_high}``."""
    rows = paired[paired["method"] == HEAD].set_index(["sample", "baseline"])
    for entry in expression["by_sample"]:
        scores = {m: r for m, r in entry["pearson_50"].items()
                  if (entry["sample"], m) in rows.index and r is not None}
        if not scores:
            continue
        best = max(scores, key=scores.get)
        row = rows.loc[(entry["sample"], best)]
        entry["versus_baseline"] = {"baseline": best, "baseline_r": scores[best],
                                    "diff": _r(row["diff"]), "ci_low": _r(row["ci_low"]),
                                    "ci_high": _r(row["ci_high"])}


def main_agreement_levels(agreement: dict) -> list[dict]:
    """Per marker, the ``hscore_agreement`` entry below the slide level with the most pairs
    (grid regions, or a tissue microarray's cores; the slide level when there is no other):
    the front page's one line per marker, the other levels being in summary.tsv."""
    best: dict[str, dict] = {}
    for entry in agreement.values():
        current = best.get(entry["marker"])
        rank = (entry["level"] != "slide", entry["n"])
        if current is None or rank > (current["level"] != "slide", current["n"]):
            best[entry["marker"]] = entry
    return list(best.values())


def summarise_run(technologies: list[str], stores: list[str | Path], metrics=None, cindex=None,
                  agreement=None, samples: list[str] | None = None, outcomes=None,
                  notes: list[str] | None = None, paired=None) -> dict:
    """The key numbers as a JSON-ready dict (sections only for the stages given).

    ``technologies``: one per sample of the sheet, in the order of ``samples`` (the sample
    names; needed with ``metrics`` to give each test sample its technology); ``stores``:
    every sample's patch store; ``metrics``/``cindex``/``agreement``/``outcomes``:
    ``results/predict/metrics.tsv``, ``results/survival/cindex.tsv``,
    ``results/stain/hscore_agreement.tsv``, ``results/survival/outcomes.tsv`` (the patients
    and events behind the c-index). ``notes``: lines on the stages the run skipped and why
    (:func:`pastflow.preflight.stage_notes`), kept as ``notes`` for the front page.
    ``paired``: ``results/predict/paired.tsv``, for each test sample's difference to its
    strongest baseline (:func:`strongest_baselines`).
    """
    if samples is not None and len(samples) != len(technologies):
        raise InputError(None, f"{len(samples)} samples (--samples) but {len(technologies)} "
                         "technologies (--technologies): give one technology per sample")
    summary = {
        "samples": len(technologies),
        "technologies": dict(sorted(Counter(technologies).items())),
        "cells": count_cells(stores),
        "notes": list(notes or []),
    }
    table = _read_result_tsv(metrics, "metrics")
    if table is not None:
        if samples is None:
            raise InputError(metrics, "needs the sample names (--samples) to give each test "
                             "sample its technology")
        summary["expression"] = summarise_expression(table, dict(zip(samples, technologies)),
                                                     source=metrics)
        paired_table = _read_result_tsv(paired, "paired")
        if paired_table is not None:
            strongest_baselines(summary["expression"], paired_table)
    table = _read_result_tsv(cindex, "cindex")
    if table is not None:
        patients = _read_result_tsv(outcomes, "outcomes")
        cohort = {"level": "patient"}
        if patients is not None:
            cohort.update(n=int(patients["patient"].nunique()),
                          events=int(patients["os_event"].astype(bool).sum()))
        summary["cindex"] = {
            row.model: {"cindex": _r(row.cindex), "ci_low": _r(row.ci_low),
                        "ci_high": _r(row.ci_high), **cohort}
            for row in table.itertuples()
        }
    table = _read_result_tsv(agreement, "agreement")
    if table is not None:
        summary["hscore_agreement"] = {
            f"{row['marker']} ({row['level']})": _agreement_entry(row)
            for _, row in table.iterrows()
        }
        summary["hscore_main"] = main_agreement_levels(summary["hscore_agreement"])
    return summary


def _agreement_entry(row: pd.Series) -> dict:
    """One marker and level of ``hscore_agreement.tsv``: r and kappa with their intervals
    (those the table has) and the reason a value is missing (a table written before the
    reasons: a generic one, never a bare NaN)."""
    entry = {"marker": str(row["marker"]), "level": str(row["level"]),
             "pearson_r": _r(row["pearson_r"]), "n": int(row["n"])}
    for key in ("pearson_ci_low", "pearson_ci_high", "kappa", "kappa_ci_low", "kappa_ci_high"):
        if key in row.index:
            entry[key] = _r(row[key])
    reason = row.get("reason")
    reason = "" if reason is None or (isinstance(reason, float) and math.isnan(reason)) \
        else str(reason)
    if not reason and entry["pearson_r"] is None:
        reason = "r undefined (fewer than 3 pairs or a constant H-score)"
    entry["reason"] = reason
    return entry


def _row(section, level, metric, value, statistic="value", **fields) -> dict:
    return {"section": section, "level": level, "metric": metric, "statistic": statistic,
            "value": value, **fields}


def summary_rows(summary: dict) -> pd.DataFrame:
    """The summary as a tidy long table, one number per row, columns :data:`COLUMNS`."""
    rows = [_row("run", "run", "samples", summary["samples"], "count"),
            _row("run", "run", "cells", summary["cells"], "count")]
    rows += [_row("run", "technology", "samples", n, "count", technology=tech)
             for tech, n in summary["technologies"].items()]

    expression = summary.get("expression")
    if expression:
        for entry in expression["by_sample"]:
            where = {"sample": entry["sample"], "technology": entry["technology"]}
            if "n_cells" in entry:
                rows.append(_row("expression", "sample", "cells", entry["n_cells"], "count",
                                 **where))
            for metric in expression["metrics"]:
                n = entry.get("n_genes") if metric == "pearson_50" else None
                for method, r in entry[metric].items():
                    rows.append(_row("expression", "sample", metric, r, method=method, n=n,
                                     n_of="genes" if n is not None else None, **where))
            versus = entry.get("versus_baseline")
            if versus:
                rows.append(_row("expression", "sample", "pearson_50_diff", versus["diff"],
                                 method=f"{HEAD} minus {versus['baseline']}",
                                 low=versus["ci_low"], high=versus["ci_high"],
                                 interval="95% paired bootstrap CI", **where))
        for entry in expression["by_technology"]:
            for metric in expression["metrics"]:
                for method, v in entry[metric].items():
                    ranged = "min" in v
                    rows.append(_row("expression", "technology", metric, v["value"],
                                     "median" if ranged else "value", technology=entry["technology"],
                                     method=method, low=v.get("min"), high=v.get("max"),
                                     interval="min-max over test samples" if ranged else None,
                                     n=v["n"], n_of="test samples"))

    for model, v in summary.get("cindex", {}).items():
        rows.append(_row("survival", v.get("level", "patient"), "cindex", v["cindex"],
                         method=model, low=v["ci_low"], high=v["ci_high"], interval="95% CI",
                         n=v.get("n"), n_of="patients" if v.get("n") is not None else None))
    for key, v in summary.get("hscore_agreement", {}).items():
        marker, level = v.get("marker", key), v.get("level", "")
        for metric, key in (("hscore_pearson_r", "pearson"), ("hscore_kappa", "kappa")):
            value = v.get("pearson_r" if key == "pearson" else key)
            low, high = v.get(f"{key}_ci_low"), v.get(f"{key}_ci_high")
            if key == "kappa" and value is None and "kappa" not in v:
                continue  # a table written before kappa
            rows.append(_row("virtual_ihc", level, metric, value, marker=marker, low=low,
                             high=high, interval="95% CI" if low is not None else None,
                             n=v["n"], n_of=f"{level}s" if level else None,
                             reason=v.get("reason") if value is None else None))

    # object dtype: counts stay integers next to correlations; n is a nullable integer.
    table = pd.DataFrame(rows, dtype=object).reindex(columns=COLUMNS)
    table["n"] = table["n"].astype("Int64")
    return table


def write_summary(summary: dict, json_path: str | Path, tsv_path: str | Path) -> None:
    """Write both files together (atomically)."""
    with atomic_outputs(json_path, tsv_path) as (tmp_json, tmp_tsv):
        Path(tmp_json).write_text(json.dumps(summary, indent=2) + "\n")
        summary_rows(summary).to_csv(tmp_tsv, sep="\t", index=False)
    log.info("summary: %d samples, %d cells%s", summary["samples"], summary["cells"],
             "".join(f", {k}" for k in ("expression", "cindex", "hscore_agreement") if k in summary))
