"""pastflow.folds: the leave-one-sample-out plan, each fold's sheet, and the folds table."""

from __future__ import annotations

import pandas as pd
import pytest

from pastflow.errors import InputError
from pastflow.folds.plan import Fold, read_sheet_rows, rotate, write_fold_sheet
from pastflow.folds.table import FOLD_COLUMNS, fold_rows, tally
from pastflow.sheet import load_sample_sheet

SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


def test_each_sample_is_tested_once_validated_once_and_trains_otherwise():
    folds = rotate(SECTIONS)
    assert [f.test for f in folds] == SECTIONS
    assert [f.val for f in folds] == ["C3", "C4", "C5", "C6", "C2"]
    assert folds[4].train == ("C3", "C4", "C5")
    for fold in folds:
        assert {fold.test, fold.val, *fold.train} == set(SECTIONS)
        assert len(fold.train) == 3 and fold.test not in fold.train and fold.val not in fold.train
    with pytest.raises(InputError, match="2 samples: folds need at least 3"):
        rotate(["a", "b"], source="s.tsv")


def test_a_folds_sheet_is_the_sheet_with_the_folds_splits(repo_root, tmp_path):
    sheet = repo_root / "config" / "samples_her2st.tsv"
    fold = rotate(SECTIONS)[2]
    written = write_fold_sheet(read_sheet_rows(sheet), fold, tmp_path / "f" / "samples.tsv")
    rows = pd.read_csv(written, sep="\t", dtype=str)
    original = pd.read_csv(sheet, sep="\t", dtype=str)
    assert list(rows.columns) == list(original.columns)
    assert dict(zip(rows["sample"], rows["split"])) == {
        "C2": "train", "C3": "train", "C4": "test", "C5": "val", "C6": "train"}
    assert rows.drop(columns="split").equals(original.drop(columns="split"))
    # A sheet the workflow reads (paths unchecked: the data need not be here).
    assert load_sample_sheet(written, check_paths=False, split_by_patient=False).shape[0] == 5


def test_the_table_joins_each_methods_score_to_its_paired_differences(tmp_path):
    fold = Fold("C4", "C5", ("C2", "C3", "C6"))
    metrics = pd.DataFrame([
        ("C4", m, g, r, r - 0.05, r + 0.05)
        for m, r in (("pastflow_head", 0.30), ("pastflow_ridge", 0.25),
                     ("random_encoder", 0.20), ("morphology_ridge", 0.28))
        for g in ("train_top", "hest_test_top")],
        columns=["sample", "method", "genes", "mean_pearson_50", "ci_low", "ci_high"])
    metrics.loc[metrics["genes"] == "hest_test_top", "mean_pearson_50"] = 0.9  # not read
    paired = pd.DataFrame([
        ("C4", "pastflow_head", "random_encoder", 0.10, 0.04, 0.16),
        ("C4", "pastflow_head", "morphology_ridge", 0.02, -0.01, 0.05),
        ("C4", "pastflow_ridge", "random_encoder", 0.05, 0.01, 0.09)],
        columns=["sample", "method", "baseline", "diff", "ci_low", "ci_high"])
    metrics.to_csv(tmp_path / "metrics.tsv", sep="\t", index=False)
    paired.to_csv(tmp_path / "paired.tsv", sep="\t", index=False)
    table = fold_rows(fold, tmp_path / "metrics.tsv", tmp_path / "paired.tsv")
    assert list(table.columns) == list(FOLD_COLUMNS) and len(table) == 3
    head = table.iloc[1]
    assert (head["fold"], head["val"], head["train"]) == ("C4", "C5", "C2,C3,C6")
    assert (head["r"], head["r_ci_low"], head["baseline_r"]) == pytest.approx((0.30, 0.25, 0.28))
    assert table["beats"].tolist() == [True, False, True]
    summary = tally(table).set_index(["method", "baseline"])
    assert summary.loc[("pastflow_head", "random_encoder"), "beaten"] == 1
    assert summary.loc[("pastflow_head", "morphology_ridge"), "beaten"] == 0
    with pytest.raises(InputError, match="no scores of test sample 'C9'"):
        fold_rows(Fold("C9", "C5", ("C2",)), tmp_path / "metrics.tsv", tmp_path / "paired.tsv")
