"""The run summary (report front page): counts and per-stage numbers from the stage tables,
per test sample and per technology, never a mean across technologies."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pandas as pd
import pytest

from pastflow.errors import InputError
from pastflow.summary.gather import COLUMNS, summarise_run, summary_rows, write_summary


def fake_store(path, in_slide):
    with h5py.File(path, "w") as f:
        f["cells/in_slide"] = np.asarray(in_slide, bool)
    return path


def write_tsv(path, **columns):
    pd.DataFrame(columns).to_csv(path, sep="\t", index=False)
    return path


def metrics_table(path, r_by_sample: dict[str, float], selections: bool = True):
    """metrics.tsv: the head at the given r, the mean baseline at 0, per sample, over the
    genes chosen on the training cells; and (``selections``) the HEST-convention rows with the
    head 0.1 higher, which the summary must not show."""
    samples = list(r_by_sample)
    rows = [{"sample": s, "method": m, "mean_pearson_50": r, "n_genes": 50, "n_cells": 100,
             "genes": "train_top", "ci_low": r - 0.05 * (r > 0), "ci_high": r + 0.05 * (r > 0)}
            for s in samples for m, r in (("pastflow_head", r_by_sample[s]),
                                          ("mean_baseline", 0.0))]
    if selections:
        rows += [{**row, "genes": "hest_test_top", "mean_pearson_50":
                  row["mean_pearson_50"] + 0.1 * (row["method"] != "mean_baseline")}
                 for row in rows]
    else:
        rows = [{k: v for k, v in row.items() if k != "genes"} for row in rows]
    return write_tsv(path, **pd.DataFrame(rows).to_dict("list"))


def test_only_the_genes_chosen_on_the_training_cells_are_summarised(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1, 1])]
    for selections in (True, False):  # a table written before the `genes` column: as it is
        metrics = metrics_table(tmp_path / "metrics.tsv", {"a": 0.7}, selections)
        summary = summarise_run(["xenium"], stores, metrics=metrics, samples=["a"])
        sample = summary["expression"]["by_sample"][0]
        assert sample["pearson_50"] == {"pastflow_head": 0.7, "mean_baseline": 0.0}
        assert "training cells" in summary["expression"]["metrics"]["pearson_50"]


def test_two_test_samples_of_two_technologies_give_two_rows_and_no_mean(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1, 1, 0]), fake_store(tmp_path / "b.h5", [1] * 5)]
    metrics = metrics_table(tmp_path / "metrics.tsv", {"a": 0.8, "b": 0.6})
    summary = summarise_run(["xenium", "visium"], stores, metrics=metrics, samples=["a", "b"])
    assert summary["samples"] == 2 and summary["cells"] == 7
    assert summary["technologies"] == {"visium": 1, "xenium": 1}
    expression = summary["expression"]
    assert expression["test_samples"] == 2
    assert expression["methods"] == ["pastflow_head", "mean_baseline"]  # the head first
    assert [(s["sample"], s["technology"], s["pearson_50"]["pastflow_head"])
            for s in expression["by_sample"]] == [("b", "visium", 0.6), ("a", "xenium", 0.8)]
    # One test sample per technology: its value, not a median.
    assert [(t["technology"], t["statistic"], t["pearson_50"]["pastflow_head"])
            for t in expression["by_technology"]] == [
        ("visium", "value", {"value": 0.6, "n": 1}), ("xenium", "value", {"value": 0.8, "n": 1})]

    rows = summary_rows(summary)
    assert list(rows.columns) == COLUMNS
    head = rows[(rows["metric"] == "pearson_50") & (rows["method"] == "pastflow_head")]
    per_sample = head[head["level"] == "sample"]
    assert sorted(zip(per_sample["sample"], per_sample["technology"], per_sample["value"])) == [
        ("a", "xenium", 0.8), ("b", "visium", 0.6)]
    assert set(per_sample["n"]) == {50} and set(per_sample["n_of"]) == {"genes"}
    # Every expression row is one sample's or one technology's: none spans both technologies.
    assert set(rows.loc[rows["section"] == "expression", "level"]) == {"sample", "technology"}
    assert head["technology"].notna().all()
    assert len(head) == 4 and not np.isclose(head["value"].astype(float), 0.7).any()
    assert (head["statistic"] == "value").all() and head["low"].isna().all()


def test_a_technology_with_several_test_samples_gives_its_median_and_range(tmp_path):
    stores = [fake_store(tmp_path / f"{s}.h5", [1]) for s in "abcd"]
    metrics = metrics_table(tmp_path / "metrics.tsv", {"a": 0.9, "b": 0.5, "c": 0.6, "d": 0.2})
    summary = summarise_run(["xenium", "xenium", "xenium", "visium"], stores, metrics=metrics,
                            samples=["a", "b", "c", "d"])
    by_technology = {t["technology"]: t for t in summary["expression"]["by_technology"]}
    assert by_technology["xenium"]["statistic"] == "median"
    assert by_technology["xenium"]["test_samples"] == 3
    assert by_technology["xenium"]["pearson_50"]["pastflow_head"] == {
        "value": 0.6, "min": 0.5, "max": 0.9, "n": 3}
    assert by_technology["visium"]["pearson_50"]["pastflow_head"] == {"value": 0.2, "n": 1}

    rows = summary_rows(summary)
    tech = rows[(rows["level"] == "technology") & (rows["section"] == "expression")
                & (rows["method"] == "pastflow_head")].set_index("technology")
    assert tech.loc["xenium", ["statistic", "value", "low", "high", "n", "n_of"]].tolist() == [
        "median", 0.6, 0.5, 0.9, 3, "test samples"]
    assert tech.loc["xenium", "interval"] == "min-max over test samples"
    assert tech.loc["visium", "statistic"] == "value" and tech.loc["visium", "n"] == 1
    assert len(rows[(rows["level"] == "sample") & (rows["method"] == "pastflow_head")]) == 4


def test_cohort_rows_say_their_level_and_n_and_the_files_agree(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1, 1, 0])]
    cindex = write_tsv(tmp_path / "cindex.tsv", model=["combined", "true_hazard"],
                       cindex=[0.71, 0.78], ci_low=[0.65, 0.74], ci_high=[0.77, 0.82])
    outcomes = write_tsv(tmp_path / "outcomes.tsv", patient=["P1", "P2", "P3"],
                         os_time=[1.0, 2.0, 3.0], os_event=[1, 0, 1])
    agreement = write_tsv(tmp_path / "agreement.tsv", marker=["CD3", "CD3"],
                          level=["slide", "region"], pearson_r=[np.nan, 0.9], n=[2, 8])
    summary = summarise_run(["xenium"], stores, cindex=cindex, outcomes=outcomes,
                            agreement=agreement, samples=["a"])
    assert "expression" not in summary  # that stage did not run
    assert summary["cindex"]["combined"] == {"cindex": 0.71, "ci_low": 0.65, "ci_high": 0.77,
                                             "level": "patient", "n": 3, "events": 2}
    assert summary["hscore_agreement"]["CD3 (slide)"]["pearson_r"] is None  # too few slides

    rows = summary_rows(summary)
    combined = rows[rows["method"] == "combined"].iloc[0]
    assert combined[["section", "level", "value", "low", "high", "interval", "n", "n_of"]].tolist() == [
        "survival", "patient", 0.71, 0.65, 0.77, "95% CI", 3, "patients"]
    ihc = rows[rows["section"] == "virtual_ihc"].set_index("level")
    assert ihc.loc["region", ["marker", "value", "n", "n_of"]].tolist() == ["CD3", 0.9, 8, "regions"]
    assert ihc.loc["slide", "n_of"] == "slides"

    out_json, out_tsv = tmp_path / "out" / "summary.json", tmp_path / "out" / "summary.tsv"
    out_json.parent.mkdir()
    write_summary(summary, out_json, out_tsv)
    assert json.loads(out_json.read_text()) == summary
    written = pd.read_csv(out_tsv, sep="\t", dtype=str)
    assert list(written.columns) == COLUMNS and len(written) == len(rows)
    assert written.loc[written["metric"] == "samples", "value"].iloc[0] == "1"  # not "1.0"


def test_expression_needs_every_test_sample_in_the_sheet(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1])]
    metrics = metrics_table(tmp_path / "metrics.tsv", {"a": 0.5, "zz": 0.4})
    with pytest.raises(InputError, match="metrics.tsv.*not in the sample sheet: zz"):
        summarise_run(["xenium"], stores, metrics=metrics, samples=["a"])
    with pytest.raises(InputError, match="--samples"):
        summarise_run(["xenium"], stores, metrics=metrics)
    with pytest.raises(InputError, match="2 samples .* 1 technologies"):
        summarise_run(["xenium"], stores, samples=["a", "b"])


def test_a_table_without_its_contract_columns_is_named(tmp_path):
    stores = [fake_store(tmp_path / "a.h5", [1])]
    bad = tmp_path / "hscore_agreement.tsv"
    pd.DataFrame({"marker": ["CD3"], "r": [0.9]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match="hscore_agreement.tsv.*level, pearson_r, n"):
        summarise_run(["xenium"], stores, agreement=bad)
    with pytest.raises(InputError, match="not a pastflow patch store"):
        summarise_run(["xenium"], [tmp_path / "hscore_agreement.tsv"])


def render_front_page(repo_root, run_summary) -> tuple[str, str]:
    """workflow/report/workflow.rst as Snakemake renders it: Jinja, then docutils."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    class Snakemake:
        config = {"samples": "config/samples.tsv", "run_summary": run_summary}

    template = (repo_root / "workflow" / "report" / "workflow.rst").read_text()
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        snakemake=Snakemake)
    html = publish_parts(text, writer="html",
                         settings_overrides={"report_level": 2, "halt_level": 5})["html_body"]
    return text, html


def test_front_page_shows_a_compact_per_sample_table(tmp_path, repo_root):
    """Issue 15: what ran and the key numbers with intervals, short enough to read without
    scrolling: six held-out slides at most, each against its strongest baseline."""
    names = [f"s{i:02d}" for i in range(12)]
    technologies = ["xenium"] * 11 + ["visium"]
    stores = [fake_store(tmp_path / f"{s}.h5", [1]) for s in names]
    metrics = metrics_table(tmp_path / "metrics.tsv", {s: 0.5 + i / 100 for i, s in enumerate(names)})
    paired = write_tsv(tmp_path / "paired.tsv", sample=names, method="pastflow_head",
                       baseline="mean_baseline", diff=[0.5 + i / 100 for i in range(12)],
                       ci_low=[0.45 + i / 100 for i in range(12)],
                       ci_high=[0.55 + i / 100 for i in range(12)])
    cindex = write_tsv(tmp_path / "cindex.tsv", model=["combined"], cindex=[0.71], ci_low=[0.65],
                       ci_high=[0.77])
    summary = summarise_run(technologies, stores, metrics=metrics, cindex=cindex, samples=names,
                            paired=paired)
    assert summary["expression"]["by_sample"][0]["versus_baseline"] == {
        "baseline": "mean_baseline", "baseline_r": 0.0, "diff": 0.61, "ci_low": 0.56,
        "ci_high": 0.66}
    text, html = render_front_page(repo_root, json.loads(json.dumps(summary)))
    assert "Key numbers" in html and "system-message" not in html, text
    assert "12 slides (1 visium, 11 xenium), 12 cells" in html
    cells = re.findall(r"<td>(?:<p>)?(.*?)(?:</p>)?</td>", html)
    # the visium sample sorts first: head with its interval, strongest baseline, difference
    assert cells[:4] == ["s11 (visium)", "0.610 (0.560–0.660)", "mean_baseline 0.000",
                         "+0.610 (0.560–0.660)"]
    assert "s04" in html and "s05" not in html and "6 more held-out slides" in html
    assert "combined 0.710 (0.650–0.770)" in html
    rows = summary_rows(summary)
    diff = rows[rows["metric"] == "pearson_50_diff"].set_index("sample")
    assert diff.loc["s11", ["method", "value", "low", "high"]].tolist() == [
        "pastflow_head minus mean_baseline", 0.61, 0.56, 0.66]

    _, html = render_front_page(repo_root, None)  # before the run has made its summary
    assert "Key numbers" not in html and "system-message" not in html


def test_agreement_gives_kappa_intervals_and_reasons_never_nan(tmp_path, repo_root):
    """Issue 17: an undefined r is shown with its reason, on the front page and in the
    tables; kappa and both intervals sit beside r."""
    stores = [fake_store(tmp_path / "a.h5", [1, 1])]
    reason = "r undefined: measured H-score 0 in every region"
    agreement = write_tsv(
        tmp_path / "agreement.tsv", marker=["HER2", "CD3"], level=["region", "region"],
        pearson_r=[np.nan, 0.9], n=[12, 8], pearson_ci_low=[np.nan, 0.8],
        pearson_ci_high=[np.nan, 0.95], kappa=[0.0, 0.75], kappa_ci_low=[0.0, 0.5],
        kappa_ci_high=[0.0, 0.9], reason=[reason, np.nan])
    summary = summarise_run(["xenium"], stores, agreement=agreement, samples=["a"])
    her2, cd3 = (summary["hscore_agreement"][k] for k in ("HER2 (region)", "CD3 (region)"))
    assert her2["pearson_r"] is None and her2["reason"] == reason and her2["kappa"] == 0.0
    assert cd3["reason"] == "" and cd3["kappa_ci_low"] == 0.5
    rows = summary_rows(summary)
    ihc = rows[rows["section"] == "virtual_ihc"].set_index(["marker", "metric"])
    assert ihc.loc[("HER2", "hscore_pearson_r"), "reason"] == reason
    assert ihc.loc[("CD3", "hscore_kappa"), ["value", "low", "high", "interval"]].tolist() == [
        0.75, 0.5, 0.9, "95% CI"]
    assert ihc.loc[("CD3", "hscore_pearson_r"), ["low", "high"]].tolist() == [0.8, 0.95]
    text, html = render_front_page(repo_root, json.loads(json.dumps(summary)))
    assert "system-message" not in html and "nan" not in text.lower()
    # a row per marker: its level and n (they differ between markers), r, kappa, and the
    # reason for a missing value in place of the value
    cells = re.findall(r"<td>(?:<p>)?(.*?)(?:</p>)?</td>", html)
    assert cells[cells.index("HER2"):][:4] == ["HER2", "12 regions", f"— ({reason})",
                                               "0.00 (0.00–0.00)"]
    assert cells[cells.index("CD3"):][:4] == ["CD3", "8 regions", "0.90 (0.80–0.95)",
                                              "0.75 (0.50–0.90)"]


def test_front_page_gives_each_marker_its_level_with_most_pairs(tmp_path, repo_root):
    """A TMA's 40 cores outrank a slide's grid regions and the slides; when every marker
    has the same level and n, it is said once above the table."""
    stores = [fake_store(tmp_path / "a.h5", [1])]
    agreement = write_tsv(
        tmp_path / "agreement.tsv", marker=["CD3"] * 3 + ["ER"] * 3,
        level=["slide", "region", "core"] * 2, pearson_r=[0.1, 0.5, 0.8, 0.2, 0.4, 0.6],
        n=[3, 29, 40] * 2, pearson_ci_low=[-1, 0.2, 0.7, -1, 0.1, 0.4],
        pearson_ci_high=[1, 0.7, 0.9, 1, 0.6, 0.75], kappa=[0.0, 0.3, 0.5, 0.1, 0.2, 0.4],
        kappa_ci_low=[0.0, 0.1, 0.3, 0.0, 0.0, 0.2], kappa_ci_high=[0.5, 0.5, 0.7, 0.4, 0.4, 0.6],
        reason=[np.nan] * 6)
    summary = summarise_run(["xenium"], stores, agreement=agreement, samples=["a"])
    assert [(v["marker"], v["level"]) for v in summary["hscore_main"]] == [("CD3", "core"),
                                                                          ("ER", "core")]
    _, html = render_front_page(repo_root, json.loads(json.dumps(summary)))
    assert "system-message" not in html and "over 40 cores" in html
    cells = re.findall(r"<td>(?:<p>)?(.*?)(?:</p>)?</td>", html)
    assert cells[cells.index("CD3"):][:3] == ["CD3", "0.80 (0.70–0.90)", "0.50 (0.30–0.70)"]


def test_skipped_stages_are_on_the_front_page(tmp_path, repo_root):
    """A stage the sheet leaves out is said in results/summary.json and on the front page, not
    only on the console (issue 16)."""
    from pastflow.cli import main

    stores = [fake_store(tmp_path / "a.h5", [1, 2])]
    note = ("no training samples (split train, with expression): model stages skipped "
            "(pretrain, embed, predict, evaluate, stain, survival)")
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps([note]))
    out = tmp_path / "summary.json"
    assert main(["summary", "--technologies", "xenium", "--stores", str(stores[0]),
                 "--notes", str(notes), "--json", str(out), "--tsv",
                 str(tmp_path / "summary.tsv")]) == 0
    summary = json.loads(out.read_text())
    assert summary["notes"] == [note]
    _, html = render_front_page(repo_root, summary)
    assert "system-message" not in html
    assert f"<strong>Skipped</strong>: {note}." in html
    assert summarise_run(["xenium"], stores)["notes"] == []  # nothing skipped: no line
