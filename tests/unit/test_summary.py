"""The run summary (report front page): counts and per-stage numbers from the stage tables."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from pastflow.errors import InputError
from pastflow.summary.gather import summarise_run, summary_rows, write_summary


def fake_store(path, in_slide):
    with h5py.File(path, "w") as f:
        f["cells/in_slide"] = np.asarray(in_slide, bool)
    return path


def test_summary_counts_cells_and_averages_methods(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1, 1, 0]), fake_store(tmp_path / "b.h5", [1] * 5)]
    metrics = tmp_path / "metrics.tsv"
    pd.DataFrame({"sample": ["a", "a", "b", "b"], "method": ["pastflow_head", "mean_baseline"] * 2,
                  "mean_pearson_50": [0.8, 0.0, 0.6, 0.0]}).to_csv(metrics, sep="\t", index=False)
    cindex = tmp_path / "cindex.tsv"
    pd.DataFrame({"model": ["combined", "true_hazard"], "cindex": [0.71, 0.78],
                  "ci_low": [0.65, 0.74], "ci_high": [0.77, 0.82]}).to_csv(cindex, sep="\t", index=False)
    summary = summarise_run(["xenium", "visium"], stores, metrics=metrics, cindex=cindex)
    assert summary["samples"] == 2 and summary["cells"] == 7
    assert summary["technologies"] == {"visium": 1, "xenium": 1}
    assert summary["pearson_50"] == {"test_samples": 2,
                                     "mean_by_method": {"mean_baseline": 0.0, "pastflow_head": 0.7}}
    assert summary["cindex"]["combined"] == {"cindex": 0.71, "ci_low": 0.65, "ci_high": 0.77}
    assert "hscore_agreement" not in summary  # that stage did not run
    rows = summary_rows(summary)
    assert rows.loc[rows["item"] == "combined", "value"].item() == "0.710 (0.650-0.770)"

    out_json, out_tsv = tmp_path / "out" / "summary.json", tmp_path / "out" / "summary.tsv"
    out_json.parent.mkdir()
    write_summary(summary, out_json, out_tsv)
    assert json.loads(out_json.read_text()) == summary
    assert len(pd.read_csv(out_tsv, sep="\t")) == len(rows)


def test_a_table_without_its_contract_columns_is_named(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1])]
    bad = tmp_path / "hscore_agreement.tsv"
    pd.DataFrame({"marker": ["CD3"], "r": [0.9]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match="hscore_agreement.tsv.*level, pearson_r, n"):
        summarise_run(["xenium"], stores, agreement=bad)
    with pytest.raises(InputError, match="not a pastflow patch store"):
        summarise_run(["xenium"], [tmp_path / "hscore_agreement.tsv"])
