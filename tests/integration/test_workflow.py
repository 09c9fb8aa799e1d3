"""The whole workflow, through Snakemake, on a small simulated cohort of every technology."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLES = [
    # sample, patient, technology, split
    ("xa", "P1", "xenium", "train"),
    ("vb", "P2", "visium", "train"),
    ("hd", "P3", "visium_hd", "test"),
    ("he", "P4", "he_only", "test"),
    # small held-out slides, one patient each: enough patients for the survival stage
    *[(f"c{i}", f"P{i + 4}", "xenium", "test") for i in range(1, 7)],
]


def sheet_row(sample, patient, technology, split, sim="results/simulated"):
    base = f"{sim}/{sample}"
    paths = {
        "xenium": (f"{base}/xenium", f"{base}/xenium/he.ome.tif", f"{base}/xenium/he_imagealignment.csv"),
        "visium": (f"{base}/outs", f"{base}/he.tif", ""),
        "visium_hd": (f"{base}/outs", f"{base}/he.tif", ""),
        "he_only": ("", f"{base}/he.tif", ""),
    }[technology]
    return "\t".join([sample, patient, technology, *paths, split])


def snakemake(workdir: Path, repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile",
           str(repo / "workflow" / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(workdir / "config" / "config.yaml"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, repo_root):
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config").mkdir()
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    config["simulate"]["n_cells"] = {"c*": 150, "*": 600}
    config.setdefault("survival", {}).update(min_patients=10, folds=3, repeats=1, inner_folds=2, bootstrap=200,
                              mil_epochs=10, mil_cells=64)
    # A short pretraining: the model stages' plumbing, not the model's quality.
    config["pretrain"]["train"].update(steps=20, batch_size=16, warmup_steps=2,
                                       checkpoint_every=10)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    header = "sample\tpatient\ttechnology\tdata\timage\talignment\tsplit\n"
    (workdir / "config" / "samples.tsv").write_text(
        header + "".join(sheet_row(*row) + "\n" for row in SAMPLES))
    run = snakemake(workdir, repo_root)
    assert run.returncode == 0, run.stderr[-5000:]
    report = snakemake(workdir, repo_root, "--report", str(workdir / "results" / "report.html"))
    assert report.returncode == 0, report.stderr[-5000:]
    return workdir


def test_every_stage_wrote_its_outputs(small_run):
    results = small_run / "results"
    for sample, _, technology, _ in SAMPLES:
        assert (results / "ingest" / f"{sample}.zarr" / "tables" / "table").is_dir()
        assert (results / "patches" / f"{sample}.h5").is_file()
        assert (results / "patches" / f"{sample}_gallery.png").stat().st_size > 10_000
        assert (results / "logs" / "ingest" / f"{sample}.log").is_file()
        has_expression = technology != "he_only"
        assert (results / "qc" / f"{sample}.h5ad").is_file() == has_expression
    assert (results / "simulated" / "clinical.tsv").is_file()


def test_xenium_sample_has_a_cell_per_patch(small_run):
    results = small_run / "results"
    qc = ad.read_h5ad(results / "qc" / "xa.h5ad")
    assert qc.n_obs > 400 and qc.var["highly_variable"].sum() > 50
    assert "counts" in qc.layers
    table = ad.read_zarr(results / "ingest" / "xa.zarr" / "tables" / "table")
    with h5py.File(results / "patches" / "xa.h5") as store:
        ids = [i.decode() if isinstance(i, bytes) else i for i in store["cells/cell_id"][:]]
    assert ids == list(table.obs["cell_id"])


def test_model_stages_embed_predict_and_evaluate_every_sample(small_run):
    results = small_run / "results"
    model = results / "pretrain" / "model"
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    steps = pd.read_csv(results / "pretrain" / "metrics.tsv", sep="\t")["step"]
    assert steps.tolist() == list(range(1, 21))
    assert (results / "pretrain" / "checkpoints" / "step_00000020").is_dir()
    for sample, _, technology, _ in SAMPLES:
        embedding = ad.read_h5ad(results / "embed" / f"{sample}.h5ad")
        assert {"X_image", "X_image_random", "X_morphology"} <= set(embedding.obsm)
        assert ("X_expression" in embedding.obsm) == (technology != "he_only")
        with h5py.File(results / "patches" / f"{sample}.h5") as store:
            assert embedding.n_obs == int(store["cells/in_slide"][:].sum())
        prediction = ad.read_h5ad(results / "predict" / f"{sample}.h5ad")
        assert prediction.n_obs == embedding.n_obs and np.isfinite(prediction.X).all()
    # every test sample with expression: five methods, two gene selections, finite scores.
    metrics = pd.read_csv(results / "predict" / "metrics.tsv", sep="\t")
    tested = [s for s, _, technology, split in SAMPLES if split == "test" and technology != "he_only"]
    assert metrics[["sample", "method", "genes"]].values.tolist() == [
        [s, m, g] for s in tested
        for m in ("pastflow_head", "pastflow_ridge", "mean_baseline", "random_encoder",
                  "morphology_ridge")
        for g in ("train_top", "hest_test_top")]
    assert np.isfinite(metrics["mean_pearson_50"]).all() and (metrics["n_genes"] == 50).all()
    assert np.isfinite(metrics["mean_offset"]).all()
    # Predictions on the training tables' scale (log1p of counts per qc.target_sum).
    assert prediction.uns["pastflow_predict"]["qc_target_sum"] == 1e4
    lopo = pd.read_csv(results / "predict" / "lopo.tsv", sep="\t")
    assert sorted(set(lopo["patient"])) == ["P1", "P2"]  # the two training patients
    for figure in ("per_gene.png", "per_gene_intervals.png", "maps.png"):
        assert (results / "predict" / "figures" / "hd" / figure).stat().st_size > 10_000


def test_stain_stage_scores_every_sample_and_checks_the_test_one(small_run):
    import openslide

    results = small_run / "results"
    cutoffs = pd.read_csv(results / "stain" / "cutoffs.tsv", sep="\t")
    assert (cutoffs["cut_1"] < cutoffs["cut_2"]).all() and (cutoffs["cut_2"] < cutoffs["cut_3"]).all()
    # One row per marker for measured scores, and one for predicted scores of each marker the
    # model predicts a gene of (fitted on the training slides' predictions).
    bases = cutoffs.groupby("marker")["applies_to"].apply(sorted)
    assert all(basis in (["measured"], ["measured", "predicted"]) for basis in bases), bases
    assert all(bases[m] == ["measured", "predicted"] for m in ("Ki67", "CD3", "pan-cytokeratin"))
    fitted = cutoffs[(cutoffs["applies_to"] == "predicted") & (cutoffs["source"] != "panel")]
    assert len(fitted) and fitted["source"].str.startswith("fitted on the predictions").all()
    for sample, *_ in SAMPLES:
        hscores = pd.read_csv(results / "stain" / sample / "hscores.tsv", sep="\t")
        slide = hscores[(hscores["region"] == "slide") & (hscores["cells"] == "all")]
        assert set(slide["source"]) == {"predicted"} and slide["hscore"].between(0, 300).all()
        assert {"Ki67", "CD3", "pan-cytokeratin"} <= set(slide["marker"])
        assert hscores["calibration"].notna().all()  # the cut-offs beside the H-scores
        with openslide.OpenSlide(str(results / "stain" / sample / "virtual_Ki67.tif")) as wsi:
            assert wsi.level_count > 1
            assert float(wsi.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=0.01)
    agreement = pd.read_csv(results / "stain" / "hscore_agreement.tsv", sep="\t")
    assert list(agreement.columns[:4]) == ["marker", "level", "pearson_r", "n"]
    assert set(agreement["level"]) <= {"slide", "region"} and (agreement["n"] >= 1).all()
    # Kappa and intervals beside r; a value is missing only with its reason.
    assert {"kappa", "kappa_ci_low", "pearson_ci_low", "reason"} <= set(agreement.columns)
    missing = agreement["pearson_r"].isna() | agreement["kappa"].isna()
    assert agreement.loc[missing, "reason"].notna().all()
    region = agreement[agreement["level"] == "region"]
    assert region["kappa"].notna().any() and region["pearson_ci_low"].notna().any()


def test_survival_stage_cross_validates_every_modality(small_run):
    results = small_run / "results" / "survival"
    cindex = pd.read_csv(results / "cindex.tsv", sep="\t")
    assert list(cindex.columns) == ["model", "cindex", "ci_low", "ci_high"]
    assert set(cindex["model"]) == {"clinical", "image", "molecular", "combined", "image_mil",
                                    "true_hazard"}
    assert cindex["cindex"].between(0, 1).all()
    assert (cindex["ci_low"] <= cindex["cindex"]).all() and (cindex["cindex"] <= cindex["ci_high"]).all()
    risk = pd.read_csv(results / "risk.tsv", sep="\t")
    assert risk["patient"].nunique() == len({p for _, p, _, _ in SAMPLES})
    # The clinical baseline (the simulated age and stage): every model against it, paired.
    models = pd.read_csv(results / "models.tsv", sep="\t").set_index("model")
    assert models["cindex_minus_clinical"].drop("clinical").notna().all()
    coefficients = pd.read_csv(results / "coefficients.tsv", sep="\t", index_col=0)
    assert coefficients["clinical baseline exp(coef)"].dropna().index.tolist() == [
        "clinical_age", "clinical_stage"]
    for figure in ("km.png", "forest.png", "cindex.png"):
        assert (results / figure).stat().st_size > 5_000  # palette PNGs: ~10 KB and more


def test_report_has_every_stage(small_run):
    html = (small_run / "results" / "report.html").read_text(errors="replace")
    for text in ("QC", "Cell patches", "xa", "he", "Model", "training_curves.png",
                 "metrics.tsv", "maps.png", "Virtual IHC", "thumbnails.jpg", "bland_altman.png", "Survival", "km.png"):
        assert text in html


def test_second_run_has_nothing_to_do(small_run, repo_root):
    dry = snakemake(small_run, repo_root, "-n")
    assert dry.returncode == 0
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_front_page_has_the_key_numbers(small_run):
    summary = json.loads((small_run / "results" / "summary.json").read_text())
    assert summary["samples"] == len(SAMPLES)
    assert summary["technologies"] == {"he_only": 1, "visium": 1, "visium_hd": 1, "xenium": 7}
    assert set(summary["cindex"]) >= {"clinical", "image", "combined", "true_hazard"}
    with h5py.File(small_run / "results" / "patches" / "xa.h5") as store:
        assert summary["cells"] > int(store["cells/in_slide"][:].sum())
    assert set(summary["expression"]["methods"]) == {
        "pastflow_head", "pastflow_ridge", "mean_baseline", "random_encoder", "morphology_ridge"}
    # Per test sample, never a mean across technologies: hd (visium_hd) and c1 (xenium).
    by_sample = {row["sample"]: row["technology"] for row in summary["expression"]["by_sample"]}
    assert by_sample["hd"] == "visium_hd" and by_sample["c1"] == "xenium"
    # Each slide's head score with its 95% interval over its cells, as the front page shows it.
    hd = next(row for row in summary["expression"]["by_sample"] if row["sample"] == "hd")
    low, high = hd["pearson_50_ci"]["pastflow_head"]
    assert low < hd["pearson_50"]["pastflow_head"] < high
    # The page's text sits in a JavaScript string, its en dashes escaped.
    html = (small_run / "results" / "report.html").read_text(errors="replace").replace(
        "\\u2013", "\u2013")
    assert "Key numbers" in html and f"{summary['cells']:,}" in html
    assert f"{hd['pearson_50']['pastflow_head']:.3f} ({low:.3f}\u2013{high:.3f})" in html


def chromium() -> str:
    """Debian's chromium, installed when missing and root; else skip."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no chromium, and not root to install it")
    install = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get"
                             " install -y -qq chromium", shell=True, capture_output=True,
                             text=True, timeout=900)
    if install.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"could not install chromium: {install.stderr[-1000:]}")
    return shutil.which("chromium")


def headless(browser: str, profile: Path, *args: str,
             virtual_time: bool = True) -> subprocess.CompletedProcess:
    """``virtual_time``: let the page's scripts run 15 s of virtual time before the dump or
    screenshot (without it, the page is taken at its load event)."""
    # Without these flags chromium keeps trying to reach the network (updates, sync).
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}"]
    flags += ["--virtual-time-budget=15000"] if virtual_time else []
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=300)


# Issue 15: the report of a run must open quickly. The base64 figures are nearly all of it.
REPORT_MAX_BYTES = 25_000_000
REPORT_MAX_LOAD_S = 5.0


def load_seconds(browser: str, profile: Path, report: Path, folder: Path) -> float:
    """Seconds from navigation to the load event of ``report`` in headless chromium: the
    report in an iframe of a page that writes the time into its own DOM, which
    ``--dump-dom`` prints at that page's load event (after the iframe's)."""
    page = folder / "load.html"
    page.write_text(f'<html><body><iframe src="{report.as_uri()}" onload="document.body'
                    '.dataset.loaded = performance.now()"></iframe></body></html>')
    dom = headless(browser, profile, "--dump-dom", page.as_uri(), virtual_time=False)
    loaded = re.search(r'data-loaded="([0-9.]+)"', dom.stdout)
    assert loaded, dom.stderr[-2000:]
    return float(loaded.group(1)) / 1000


def test_report_renders_in_chromium(small_run, tmp_path):
    from PIL import Image

    browser = chromium()
    report = (small_run / "results" / "report.html").resolve()
    assert report.stat().st_size <= REPORT_MAX_BYTES, report.stat().st_size
    seconds = load_seconds(browser, tmp_path / "profile-load", report, tmp_path)
    assert seconds < REPORT_MAX_LOAD_S, seconds
    dom = headless(browser, tmp_path / "profile-dom", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The report is a JavaScript app: these appear only once it has rendered.
    for section in ("0. Summary", "1. QC", "2. Cell patches", "3. Model", "4. Virtual IHC",
                    "5. Survival", "Key numbers"):
        assert section in dom.stdout, section
    shot = small_run / "results" / "report_screenshot.png"
    run = headless(browser, tmp_path / "profile-shot", f"--screenshot={shot}",
                   "--window-size=1400,1000", report.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and panels, not blank


def test_adding_a_sample_reruns_only_its_jobs_and_the_gathers(small_run, repo_root):
    sheet = small_run / "config" / "samples.tsv"
    original = sheet.read_text()
    try:
        sheet.write_text(original + sheet_row("he2", "P99", "he_only", "test") + "\n")
        dry = snakemake(small_run, repo_root, "-n")
        assert dry.returncode == 0, dry.stderr[-3000:]
        jobs = planned_jobs(dry.stdout + dry.stderr)
    finally:
        sheet.write_text(original)
    per_sample = {(rule, "he2") for rule in ("simulate_sample", "ingest", "patches", "embed",
                                             "predict", "stain", "stain_images")}
    gathers = {("simulate_clinical", None), ("survival_features", None), ("survival", None),
               ("survival_figures", None), ("summary", None)}
    assert set(jobs) == per_sample | gathers


def planned_jobs(dry_run_log: str) -> list[tuple[str, str | None]]:
    """(rule, sample or None) of every job a dry run lists: a ``rule <name>:`` line opens a
    job, an indented ``wildcards: sample=...`` line below it names the sample."""
    jobs: list[list] = []
    for line in dry_run_log.splitlines():
        opened = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if opened:
            jobs.append([opened.group(1), None])
        elif jobs and line.strip().startswith("wildcards:"):
            sample = re.search(r"sample=([^,\s]+)", line)
            jobs[-1][1] = sample.group(1) if sample else None
    return [(rule, sample) for rule, sample in jobs if rule != "all"]
