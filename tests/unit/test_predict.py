"""pastflow.predict: per-gene Pearson r, the HEST ridge probe, the four-method evaluation
(known answers on synthetic arrays), the head's predictions, the figures, and the predict,
evaluate and evaluate-lopo commands (settings from a settings file) on a real (tiny)
pretrained model; predict refuses embeddings of a store at another resolution."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pastflow.errors import InputError
from pastflow.predict.evaluate import (BASELINES, METHODS, PASTFLOW_METHODS, MeasuredSample,
                                       bootstrap_intervals, evaluate_leave_one_patient_out,
                                       evaluate_sample, pooled_variance, selection_genes,
                                       summarise)
from pastflow.predict.metrics import most_variable_genes, pearson_per_gene
from pastflow.predict.ridge import HEST_COMPONENTS, fit_hest_ridge
from pastflow.predict.settings import EvaluateSettings, PredictSettings
from test_embed import cohort, embedded, trained  # noqa: F401 (fixtures)

# ----------------------------------------------------------------------------- Pearson r


def test_pearson_matches_numpy_and_known_values():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    b[:, 0] = 3 * a[:, 0] + 1      # r = 1
    b[:, 1] = -0.5 * a[:, 1]       # r = -1
    r = pearson_per_gene(a, b)
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(5)]
    assert r == pytest.approx(expected, abs=1e-12)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(-1.0)


def test_a_constant_prediction_or_measurement_scores_zero_not_nan():
    measured = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    constant = np.full((4, 2), 0.7)
    assert pearson_per_gene(measured, constant).tolist() == [0.0, 0.0]
    # Column 1 is measured constant: undefined, counted 0, even against a varying prediction.
    assert pearson_per_gene(measured, measured[::-1] + [[0, 0], [0, 1], [0, 2], [0, 3]])[1] == 0.0
    # A float32 round-off of a constant is still a constant, not a correlation of +-1.
    wobble = (np.float32(0.1) * np.ones((4, 1), np.float32) + np.float32(1e-9)).astype(np.float32)
    wobble[2] = np.nextafter(wobble[2], np.float32(1))
    assert pearson_per_gene(measured[:, :1], wobble) == pytest.approx([0.0])


def test_pearson_rejects_bad_input():
    with pytest.raises(ValueError, match="differ"):
        pearson_per_gene(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        pearson_per_gene(np.array([[1.0], [np.nan], [2.0]]), np.ones((3, 1)))
    with pytest.raises(ValueError, match="at least 2"):
        pearson_per_gene(np.ones((1, 2)), np.ones((1, 2)))


def test_most_variable_genes_ranks_by_variance_ties_in_gene_order():
    x = np.array([[0, 0, 5, 1], [2, 0, 5, 3], [4, 0, 5, 5]], float)  # variances 8/3, 0, 0, 8/3
    assert most_variable_genes(x, ["a", "b", "c", "d"], 3) == ["a", "d", "b"]
    assert most_variable_genes(x, ["a", "b", "c", "d"], 10) == ["a", "d", "b", "c"]


# ----------------------------------------------------------------------------- the probe


def linear_data(n: int, genes: int = 6, dim: int = 32, seed: int = 0):
    """Expression that the embeddings encode linearly (plus a little noise); the encoding
    is the same for every ``seed``, the cells are not."""
    rng = np.random.default_rng(seed)
    expression = rng.gamma(2.0, 1.0, size=(n, genes))
    mixing = np.random.default_rng(1234).normal(size=(genes, dim))
    embeddings = expression @ mixing + 0.01 * rng.normal(size=(n, dim))
    return embeddings, expression


def test_ridge_on_embeddings_that_encode_expression_linearly_gets_r_near_1():
    x, y = linear_data(400)
    assert EvaluateSettings().pca_components == HEST_COMPONENTS  # the HEST protocol's width
    probe = fit_hest_ridge(x[:300], y[:300], n_components=HEST_COMPONENTS, seed=0)
    assert probe.n_components == 32  # capped at the embedding width
    assert probe.alpha == pytest.approx(100 / (32 * 6))
    r = pearson_per_gene(y[300:], probe.predict(x[300:]))
    assert r.min() > 0.99
    # Predictions sit at the expression's level (the intercept is fitted).
    assert np.abs(probe.predict(x[300:]).mean(0) - y[300:].mean(0)).max() < 0.1


def test_ridge_on_embeddings_unrelated_to_expression_gets_r_near_0():
    rng = np.random.default_rng(1)
    _, y = linear_data(600)
    x = rng.normal(size=(600, 64))
    probe = fit_hest_ridge(x[:400], y[:400], n_components=256, seed=0)
    assert probe.n_components == 64
    assert abs(pearson_per_gene(y[400:], probe.predict(x[400:])).mean()) < 0.1


def test_ridge_caps_components_at_cells_and_rejects_bad_input():
    x, y = linear_data(20, dim=64)
    assert fit_hest_ridge(x, y, n_components=256, seed=0).n_components == 19
    with pytest.raises(ValueError, match="same number of rows"):
        fit_hest_ridge(x, y[:10], n_components=256, seed=0)
    x[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_hest_ridge(x, y, n_components=256, seed=0)


# ----------------------------------------------------------------------------- evaluation


def measured_sample(name, patient, n, seed, informative=True, scale=None) -> MeasuredSample:
    """Genes g0..g5 encoded linearly by X_image; X_image_random is noise; the 5 morphology
    features encode g0 only. g6 varies least. ``scale`` multiplies the genes' expression."""
    x, y = linear_data(n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    y = np.column_stack([y, 0.01 * rng.normal(size=n)])
    if scale is not None:
        y = y * np.asarray(scale, float)
    morphology = np.column_stack([y[:, 0] + 0.05 * rng.normal(size=n), rng.normal(size=(n, 4))])
    genes = [f"g{i}" for i in range(7)]
    ids = np.array([f"{name}-{i}" for i in range(n)])
    return MeasuredSample(name=name, patient=patient, cell_ids=ids, genes=genes,
                          expression=sp.csr_matrix(y.astype(np.float32)),
                          embeddings={"X_image": x if informative else rng.normal(size=x.shape),
                                      "X_image_random": rng.normal(size=x.shape),
                                      "X_morphology": morphology},
                          xy=rng.uniform(0, 100, size=(n, 2)))


# Training cells vary most in g5, g4, ...; the test cells in g0, g1, ...: the two gene
# selections differ.
TRAIN_SCALE, TEST_SCALE = [1, 2, 3, 4, 5, 6, 1], [6, 5, 4, 3, 2, 1, 1]


def test_pooled_variance_is_the_variance_over_all_training_cells():
    samples = [measured_sample("a", "P1", 50, 1, scale=TRAIN_SCALE),
               measured_sample("b", "P2", 70, 2, scale=TEST_SCALE)]
    genes = ["g6", "g0", "g5"]
    dense = np.concatenate([s.columns(genes) for s in samples])
    assert pooled_variance(samples, genes) == pytest.approx(dense.var(axis=0), rel=1e-6)
    with pytest.raises(KeyError, match="'zz'"):
        pooled_variance(samples, ["g0", "zz"])


def test_evaluate_sample_known_answers():
    train = [measured_sample("a", "P1", 300, 1, scale=TRAIN_SCALE),
             measured_sample("b", "P2", 300, 2, scale=TRAIN_SCALE)]
    test = measured_sample("t", "P3", 200, 3, scale=TEST_SCALE)
    # The head predicts the truth for the genes chosen on the training cells only.
    head = pd.DataFrame(test.columns(test.genes), index=test.cell_ids, columns=test.genes)
    head[["g0", "g1", "g2", "g3", "g6"]] = 1.0
    per_gene, predictions, genes = evaluate_sample(
        test, train, head, EvaluateSettings(n_genes=2, markers=["g6", "nope"]))
    assert set(per_gene["method"]) == set(METHODS)
    assert genes == ["g5", "g4", "g0", "g1", "g6"]  # training top, test top, then the marker
    flags = per_gene.drop_duplicates("gene").set_index("gene")
    assert flags["train_rank"].to_dict() == {"g5": 1, "g4": 2, "g0": 0, "g1": 0, "g6": 0}
    assert flags["variance_rank"].to_dict() == {"g5": 0, "g4": 0, "g0": 1, "g1": 2, "g6": 0}
    assert flags["train_top"].sum() == 2 and flags["top"].sum() == 2
    assert flags.loc["g6", "marker"] and not flags.loc["g5", "marker"]
    r = per_gene.pivot(index="gene", columns="method", values="pearson_r")
    assert r.loc[["g5", "g4"], "pastflow_head"].tolist() == pytest.approx([1, 1])
    assert r.loc[["g0", "g1"], "pastflow_head"].tolist() == [0, 0]
    assert (r["mean_baseline"] == 0).all()
    assert r.loc[genes[:4], "pastflow_ridge"].min() > 0.99
    assert r.loc[genes[:4], "random_encoder"].abs().max() < 0.3
    # Morphology features that encode g0 only, through the same probe (5 features: PCA keeps 5).
    assert r.loc["g0", "morphology_ridge"] > 0.95
    assert r.loc[["g5", "g4", "g1"], "morphology_ridge"].abs().max() < 0.3
    summary = summarise(per_gene).set_index(["method", "genes"])
    assert summary.loc[("pastflow_head", "train_top"), "mean_pearson_50"] == pytest.approx(1)
    assert summary.loc[("pastflow_head", "hest_test_top"), "mean_pearson_50"] == 0
    assert summary.loc[("mean_baseline", "train_top"), "mean_pearson_50"] == 0
    assert (summary["n_genes"] == 2).all() and len(summary) == 2 * len(METHODS)
    assert predictions["mean_baseline"].shape == (200, 5)
    # Predicted minus measured mean level: 0 where the head is the truth; 1 - mean elsewhere.
    assert summary.loc[("pastflow_head", "train_top"), "mean_offset"] == pytest.approx(0)
    measured_mean = test.columns(["g0", "g1"]).mean(axis=0)
    assert summary.loc[("pastflow_head", "hest_test_top"), "mean_offset"] == pytest.approx(
        float(np.mean(1.0 - measured_mean)))


def test_bootstrap_intervals_per_selection_per_gene_and_paired():
    train = [measured_sample("a", "P1", 300, 1, scale=TRAIN_SCALE)]
    test = measured_sample("t", "P3", 200, 3, scale=TEST_SCALE)
    head = pd.DataFrame(test.columns(test.genes), index=test.cell_ids, columns=test.genes)
    head[["g0", "g1"]] = 1.0
    settings = EvaluateSettings(n_genes=2, markers=[], bootstrap=200)
    per_gene, predictions, genes = evaluate_sample(test, train, head, settings)
    intervals, paired, gene_intervals = bootstrap_intervals(
        test, selection_genes(per_gene), predictions, genes, settings)
    assert intervals[["method", "genes"]].values.tolist() == [
        [m, g] for g in ("train_top", "hest_test_top") for m in METHODS]
    ci = intervals.set_index(["method", "genes"])
    assert ci.loc[("pastflow_head", "train_top")].tolist() == pytest.approx([1, 1])
    assert ci.loc[("pastflow_head", "hest_test_top")].tolist() == [0, 0]
    low, high = ci.loc[("morphology_ridge", "hest_test_top")]  # g0 (~0.99) and g1 (~0)
    assert 0.3 < low < 0.5 < high < 0.7
    assert paired[["method", "baseline"]].values.tolist() == [
        [m, b] for m in PASTFLOW_METHODS for b in BASELINES]
    assert "morphology_ridge" in BASELINES
    for row in paired.itertuples():
        assert row.ci_low <= row.diff <= row.ci_high
    # Per-gene intervals hold the gene's r; a constant prediction's is [0, 0].
    per_gene = per_gene.merge(gene_intervals, on=["method", "gene"])
    assert (per_gene["ci_low"] <= per_gene["pearson_r"] + 1e-12).all()
    assert (per_gene["pearson_r"] <= per_gene["ci_high"] + 1e-12).all()
    g1 = per_gene.set_index(["method", "gene"]).loc[("pastflow_ridge", "g1")]
    assert 0 < g1["ci_high"] - g1["ci_low"] < 0.01  # r ~ 0.999, tightly
    assert (per_gene.loc[per_gene["method"] == "mean_baseline", ["ci_low", "ci_high"]] == 0).all(
        axis=None)


def test_evaluate_sample_uses_only_genes_every_sample_measures():
    train = [measured_sample("a", "P1", 100, 1)]
    test = measured_sample("t", "P3", 80, 3)
    train[0].genes = ["g0", "g1", "x2", "x3", "x4", "x5", "x6"]  # shares g0, g1 only
    head = pd.DataFrame(1.0, index=test.cell_ids, columns=test.genes)
    per_gene, _, genes = evaluate_sample(test, train, head, EvaluateSettings(n_genes=50))
    assert sorted(genes) == ["g0", "g1"]
    with pytest.raises(ValueError, match="no head prediction"):
        evaluate_sample(test, train, head.iloc[1:], EvaluateSettings(n_genes=50))


def test_leave_one_patient_out():
    samples = [measured_sample("a", "P1", 150, 1), measured_sample("b", "P2", 150, 2),
               measured_sample("c", "P2", 150, 4), measured_sample("d", "P3", 150, 5)]
    lopo = evaluate_leave_one_patient_out(samples, [f"g{i}" for i in range(7)],
                                          EvaluateSettings(n_genes=4))
    assert lopo["patient"].unique().tolist() == ["P1", "P2", "P3"]
    p2 = lopo[lopo["patient"] == "P2"].set_index("method")
    assert p2.loc["pastflow_ridge", "n_cells"] == 300  # both of P2's samples held out together
    assert p2.loc["pastflow_ridge", "n_train_cells"] == 300
    assert (lopo.loc[lopo["method"] == "pastflow_ridge", "mean_pearson_50"] > 0.99).all()
    assert (lopo.loc[lopo["method"] == "mean_baseline", "mean_pearson_50"] == 0).all()
    one = evaluate_leave_one_patient_out(samples[1:3], ["g0"], EvaluateSettings(n_genes=4))
    assert one.empty and "mean_pearson_50" in one.columns


# ----------------------------------------------------------------------------- the head


def small_model(likelihood: str, seed: int = 0):
    from pastflow.pretrain.settings import resolve_pretrain_config
    from pastflow.models.model import PastModel

    config = resolve_pretrain_config({"model": {
        "embed_dim": 8, "image": {"name": "timm", "kwargs": {"arch": "resnet10t"}},
        "reconstruction": {"likelihood": likelihood, "hidden": 4},
        "losses": {"pathway_regression": 0, "pathway_clip": 0}}})["model"]
    config.update(genes=["A", "B", "C"], pathways=[], image_px=16)
    torch.manual_seed(seed)
    return PastModel(config).eval()


def test_head_predictions_mse_and_nb():
    from pastflow.predict.head import cohort_library, predict_log_expression

    h = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    mse = small_model("mse")
    with torch.no_grad():
        direct = mse.reconstruction_head(torch.from_numpy(h)).numpy()
    assert predict_log_expression(mse, h) == pytest.approx(direct, abs=1e-6)
    nb = small_model("nb")
    with torch.no_grad():
        proportions = torch.softmax(nb.reconstruction_head(torch.from_numpy(h)), -1).numpy()
    assert predict_log_expression(nb, h, 200.0) == pytest.approx(np.log1p(200 * proportions),
                                                                 rel=1e-5)
    with pytest.raises(InputError, match="target_sum"):
        predict_log_expression(nb, h)
    with pytest.raises(InputError, match="wide"):
        predict_log_expression(mse, h[:, :4])
    x = sp.csr_matrix(np.log1p(np.array([[1.0, 2.0, 9.0], [3.0, 0.0, 9.0], [5.0, 4.0, 9.0]])))
    # Library of A and B per cell: 3, 3, 9 -> median 3 (C is not a model gene here).
    assert cohort_library(x, ["A", "B", "Z"], ["A", "B", "C"]) == pytest.approx(3.0)


def test_a_head_fitted_on_a_deep_slide_predicts_a_shallow_one_at_its_measured_level(tmp_path):
    """Issue 17: the same tissue sequenced a tenth as deeply. With QC's fixed target the
    measured levels stay put, so a head fitted on the deep slide predicts the shallow one at
    the level measured there (median-depth scaling: ~2.3 log1p units above it)."""
    import h5py

    from pastflow.models.checkpoint import save_checkpoint
    from pastflow.models.model import PastModel
    from pastflow.models.provenance import training_data
    from pastflow.predict.sample import predict_sample
    from pastflow.pretrain.settings import resolve_pretrain_config
    from pastflow.qc.filter import run_qc
    from pastflow.qc.settings import QCSettings
    from test_qc import spots, subsample

    full = spots(n_spots=300, n_genes=40)
    settings = QCSettings(min_counts=10, min_genes=5, min_cells=3, n_top_genes=20)
    deep, shallow = run_qc(full, settings), run_qc(subsample(full, 0.1), settings)
    for table in (deep, shallow):
        table.obs["cell_id"] = table.obs_names
    deep.write_h5ad(tmp_path / "deep.h5ad")
    shallow.write_h5ad(tmp_path / "shallow.h5ad")
    with h5py.File(tmp_path / "deep.h5", "w") as f:  # a patch store's attributes
        f.attrs.update(unit="spot", unit_diameter_um=55.0, patch_um=80.0)
    # The image sees the tissue, not the sequencing depth: one embedding for both slides.
    h = np.asarray(deep.X[:, :8].toarray(), np.float32)
    h = (h - h.mean(axis=0)) / h.std(axis=0)
    config = resolve_pretrain_config({"model": {
        "embed_dim": 8, "image": {"name": "timm", "kwargs": {"arch": "resnet10t"}},
        "reconstruction": {"likelihood": "mse", "hidden": 16},
        "losses": {"pathway_regression": 0, "pathway_clip": 0}}})
    config["model"].update(genes=list(deep.var_names), pathways=[], image_px=16)
    torch.manual_seed(0)
    model = PastModel(config["model"])
    target = torch.from_numpy(deep.X.toarray())
    optimiser = torch.optim.Adam(model.reconstruction_head.parameters(), lr=0.03)
    for _ in range(300):
        optimiser.zero_grad()
        loss = torch.mean((model.reconstruction_head(torch.from_numpy(h)) - target) ** 2)
        loss.backward()
        optimiser.step()
    data = training_data([tmp_path / "deep.h5"], [tmp_path / "deep.h5ad"])
    assert data[0]["qc_target_sum"] == 1e4  # the checkpoint records the scale
    save_checkpoint(tmp_path / "model", model, config, step=1, training_data=data)
    embedding = ad.AnnData(obs=pd.DataFrame({"cell_id": shallow.obs_names, "sample": "shallow"},
                                            index=shallow.obs_names),
                           obsm={"X_image": h, "X_image_random": h})
    embedding.write_h5ad(tmp_path / "embedding.h5ad")

    predicted = predict_sample(tmp_path / "model", tmp_path / "embedding.h5ad",
                               tmp_path / "p.h5ad", PredictSettings(),
                               table_path=tmp_path / "shallow.h5ad", split="test")
    offset = (np.asarray(predicted.X).mean(axis=0)
              - np.asarray(shallow.X.mean(axis=0)).ravel())
    assert abs(offset.mean()) < 0.15 and np.abs(offset).max() < 0.5
    assert predicted.uns["pastflow_predict"]["qc_target_sum"] == 1e4

    # A QC table on another scale than the training tables' is refused, naming it.
    run_qc(subsample(full, 0.1), QCSettings(min_counts=10, min_genes=5, min_cells=3,
                                            n_top_genes=20, target_sum=1e6)
           ).write_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(InputError, match="other.h5ad: normalised to 1e[+]06 counts"):
        predict_sample(tmp_path / "model", tmp_path / "embedding.h5ad", tmp_path / "q.h5ad",
                       PredictSettings(), table_path=tmp_path / "other.h5ad")
    assert not (tmp_path / "q.h5ad").exists()


# ----------------------------------------------------------------------------- figures


def test_figures_are_drawn(tmp_path):
    from pastflow.predict.plots import plot_marker_maps, plot_per_gene, plot_per_gene_intervals

    train = [measured_sample("a", "P1", 200, 1)]
    test = measured_sample("t", "P3", 120, 3)
    head = pd.DataFrame(test.columns(test.genes), index=test.cell_ids, columns=test.genes)
    settings = EvaluateSettings(n_genes=4, markers=["g6"], bootstrap=50)
    per_gene, predictions, genes = evaluate_sample(test, train, head, settings)
    plot_per_gene(per_gene, "t", tmp_path / "bars.png")
    _, _, intervals = bootstrap_intervals(test, selection_genes(per_gene), predictions, genes,
                                          settings)
    figure = plot_per_gene_intervals(per_gene.merge(intervals, on=["method", "gene"]), "t",
                                     tmp_path / "intervals.png")
    ax = figure.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(shown) == sorted(per_gene.loc[per_gene["train_top"], "gene"].unique())
    head_r = per_gene[per_gene["method"] == "pastflow_head"].set_index("gene")["pearson_r"]
    assert np.all(np.diff(head_r[shown].to_numpy()) >= 0)  # the head's best at the top
    assert len(figure.legends[0].get_texts()) == len(METHODS) - 1  # not the mean baseline
    assert (tmp_path / "intervals.png").stat().st_size > 5_000  # palette PNG, not blank
    thumbnail = np.full((50, 50, 3), 230, np.uint8)
    plot_marker_maps(thumbnail, 2.0, test.xy, {"measured": test.columns(["g0", "g6"]),
                                               "pastflow_head": predictions["pastflow_head"][:, [0, 4]]},
                     ["g0", "g6"], {"pastflow_head": {"g0": 1.0}}, "t", tmp_path / "maps.png")
    assert (tmp_path / "bars.png").stat().st_size > 5_000
    assert (tmp_path / "maps.png").stat().st_size > 5_000


# ----------------------------------------------------------------------------- on files


def evaluate_args(embedded, cohort, tmp_path, test_table=None, predictions=None):
    """``pastflow evaluate`` on s2 (test) against s1 (training)."""
    s1, s2 = cohort
    return ["evaluate", "--test-embeddings", str(embedded["s2"]), "--test-tables",
            str(test_table or s2.table), "--predictions", str(predictions or tmp_path / "p.h5ad"),
            "--train-embeddings", str(embedded["s1"]), "--train-tables", str(s1.table),
            "--metrics", str(tmp_path / "metrics.tsv"), "--per-gene",
            str(tmp_path / "per_gene.tsv"), "--paired", str(tmp_path / "paired.tsv"),
            "--figures", str(tmp_path / "figures"), "--no-progress"]


def test_predict_and_evaluate_commands_on_a_pretrained_model(embedded, trained, cohort,
                                                              tmp_path):
    from pastflow.cli import main

    out = {}
    for sample in cohort:
        out[sample.name] = tmp_path / f"{sample.name}.h5ad"
        assert main(["predict", "--model", str(trained / "model"), "--embedding",
                     str(embedded[sample.name]), "--table", str(sample.table), "--out",
                     str(out[sample.name])]) == 0
    prediction = ad.read_h5ad(out["s2"])
    assert prediction.n_obs == 36 and prediction.n_vars == len(
        pd.read_json(trained / "model" / "config.json", typ="series")["config"]["model"]["genes"])
    assert np.isfinite(prediction.X).all()
    assert prediction.uns["pastflow_predict"]["likelihood"] == "mse"
    # A workflow config works as a settings file too: only its `evaluate` section is read.
    settings = tmp_path / "config.yaml"
    settings.write_text("qc:\n  min_counts: 3\nevaluate:\n  n_genes: 8\n"
                        "  markers: [CD3D, MKI67]\n  figure_samples: 1\n")
    assert main(evaluate_args(embedded, cohort, tmp_path, predictions=out["s2"])
                + ["--settings", str(settings)]) == 0
    metrics = pd.read_csv(tmp_path / "metrics.tsv", sep="\t")
    assert metrics.columns.tolist() == ["sample", "method", "mean_pearson_50", "n_genes",
                                        "mean_pearson_markers", "n_cells", "n_train_cells",
                                        "ci_low", "ci_high", "genes", "mean_offset"]
    assert np.isfinite(metrics["mean_offset"]).all()
    assert metrics[["sample", "method", "genes"]].values.tolist() == [
        ["s2", m, g] for m in METHODS for g in ("train_top", "hest_test_top")]
    scored = metrics[metrics["method"] != "mean_baseline"]
    assert ((scored["ci_low"] < scored["mean_pearson_50"])
            & (scored["mean_pearson_50"] < scored["ci_high"])).all()
    paired = pd.read_csv(tmp_path / "paired.tsv", sep="\t")
    assert paired.columns.tolist() == ["sample", "method", "baseline", "diff", "ci_low", "ci_high"]
    assert paired[["method", "baseline"]].values.tolist() == [
        [m, b] for m in ("pastflow_head", "pastflow_ridge")
        for b in ("random_encoder", "mean_baseline", "morphology_ridge")]
    headline = metrics[metrics["genes"] == "train_top"]
    point = headline.set_index("method")["mean_pearson_50"]
    for row in paired.itertuples():
        assert row.diff == pytest.approx(point[row.method] - point[row.baseline], abs=2e-6)
        assert row.ci_low <= row.diff <= row.ci_high
    assert np.isfinite(metrics["mean_pearson_50"]).all() and (metrics["n_genes"] == 8).all()
    assert (metrics.loc[metrics["method"] == "mean_baseline", "mean_pearson_50"] == 0).all()
    per_gene = pd.read_csv(tmp_path / "per_gene.tsv", sep="\t")
    assert per_gene.columns.tolist() == ["sample", "method", "gene", "pearson_r",
                                         "variance_rank", "top", "marker", "train_rank",
                                         "train_top", "ci_low", "ci_high", "level_offset"]
    # Each selection's mean r is the mean of its genes' r.
    for row in metrics.itertuples():
        flag = "train_top" if row.genes == "train_top" else "top"
        genes = per_gene[(per_gene["method"] == row.method) & per_gene[flag]]
        assert len(genes) == 8
        assert genes["pearson_r"].mean() == pytest.approx(row.mean_pearson_50, abs=1e-5)
    assert set(per_gene.loc[per_gene["marker"], "gene"]) == {"CD3D", "MKI67"}
    assert not (tmp_path / "lopo.tsv").exists()  # evaluate-lopo's now
    assert (tmp_path / "figures" / "s2" / "per_gene.png").stat().st_size > 5_000
    assert (tmp_path / "figures" / "s2" / "maps.png").stat().st_size > 5_000
    assert (tmp_path / "figures" / "s2" / "per_gene_intervals.png").stat().st_size > 5_000
    # figure_samples: 0 scores every test sample and draws none.
    settings.write_text("evaluate:\n  n_genes: 8\n  markers: [CD3D, MKI67]\n"
                        "  figure_samples: 0\n")
    shutil.rmtree(tmp_path / "figures")
    assert main(evaluate_args(embedded, cohort, tmp_path, predictions=out["s2"])
                + ["--settings", str(settings)]) == 0
    assert (tmp_path / "figures").is_dir() and not any((tmp_path / "figures").iterdir())
    assert pd.read_csv(tmp_path / "metrics.tsv", sep="\t")["mean_pearson_50"].tolist() == \
        pytest.approx(metrics["mean_pearson_50"].tolist())
    # The settings of the old flags are settings now.
    with pytest.raises(SystemExit):
        main(evaluate_args(embedded, cohort, tmp_path, predictions=out["s2"])
             + ["--n-genes", "8"])


def test_evaluate_lopo_command_holds_out_each_training_patient(embedded, trained, cohort,
                                                               tmp_path, capsys):
    from pastflow.cli import main

    s1, s2 = cohort  # two patients (the QC tables name none: each sample is its own)
    settings = tmp_path / "evaluate.json"
    settings.write_text(json.dumps({"evaluate": {"n_genes": 6, "seed": 1}}))
    lopo_path = tmp_path / "lopo.tsv"
    args = ["evaluate-lopo", "--model", str(trained / "model"), "--train-embeddings",
            str(embedded["s1"]), str(embedded["s2"]), "--train-tables", str(s1.table),
            str(s2.table), "--out", str(lopo_path), "--settings", str(settings)]
    assert main(args) == 0
    lopo = pd.read_csv(lopo_path, sep="\t")
    assert lopo.columns.tolist() == ["patient", "method", "mean_pearson_50", "n_genes",
                                     "n_cells", "n_train_cells"]
    assert lopo[["patient", "method"]].values.tolist() == [
        [p, m] for p in ("s1", "s2") for m in ("pastflow_ridge", "random_encoder",
                                               "morphology_ridge", "mean_baseline")]
    assert (lopo["n_genes"] == 6).all() and (lopo["n_cells"] == 36).all()
    assert (lopo["n_train_cells"] == 36).all()
    assert np.isfinite(lopo["mean_pearson_50"]).all()
    assert (lopo.loc[lopo["method"] == "mean_baseline", "mean_pearson_50"] == 0).all()
    # One training patient: an empty table with the columns.
    assert main(args[:3] + ["--train-embeddings", str(embedded["s1"]), "--train-tables",
                            str(s1.table), "--out", str(lopo_path)]) == 0
    one = pd.read_csv(lopo_path, sep="\t")
    assert one.empty and one.columns.tolist() == lopo.columns.tolist()
    assert main(args[:3] + ["--train-embeddings", str(embedded["s1"]), "--train-tables",
                            str(s1.table), str(s2.table), "--out", str(lopo_path)]) == 2
    assert "--train-tables" in capsys.readouterr().err


def test_predict_refuses_embeddings_of_a_store_at_another_resolution(trained, cohort, tmp_path,
                                                                     capsys):
    from pastflow.cli import main
    from pastflow.embed.sample import embed_sample
    from pastflow.embed.settings import EmbedSettings
    from pastflow.predict.sample import predict_sample
    from test_embed import store_at, without_resolution
    from test_models_fixtures import MPP

    # Embedded at 1 um/px with a checkpoint older than the contract (accepted, warned) ...
    old = without_resolution(trained / "model", tmp_path / "old")
    coarse = store_at(cohort[0], 2 * MPP, tmp_path / "coarse.h5")
    embedding = tmp_path / "coarse.h5ad"
    embed_sample(old, coarse, embedding, EmbedSettings(), progress=False)
    # ... then predicted with the model trained at 0.5 um/px: refused, naming both.
    out = tmp_path / "predicted.h5ad"
    with pytest.raises(InputError) as err:
        predict_sample(trained / "model", embedding, out, PredictSettings())
    assert err.value.path == str(embedding) and str(trained / "model") in str(err.value)
    assert "1.0000 um/px" in str(err.value) and "0.5000 um/px" in str(err.value)
    assert main(["predict", "--model", str(trained / "model"), "--embedding", str(embedding),
                 "--out", str(out)]) == 2
    assert "0.5000 um/px" in capsys.readouterr().err and not out.exists()
    # The old checkpoint predicts from it (no resolution to check), with a warning.
    assert predict_sample(old, embedding, out, PredictSettings()).n_obs == 36


def test_evaluate_names_the_file_when_tables_do_not_match(embedded, cohort, tmp_path, capsys):
    from pastflow.cli import main

    s1, s2 = cohort
    # The test sample's embeddings given with the other sample's QC table: no shared cell.
    assert main(evaluate_args(embedded, cohort, tmp_path, test_table=s1.table,
                              predictions=tmp_path / "none.h5ad")) == 2
    err = capsys.readouterr().err
    assert str(s1.table) in err and "no cell of the QC table has an embedding" in err
    assert not (tmp_path / "metrics.tsv").exists()


def test_evaluate_refuses_embeddings_written_before_the_morphology_features(
        embedded, cohort, tmp_path, capsys):
    from pastflow.cli import main

    old = ad.read_h5ad(embedded["s1"])
    del old.obsm["X_morphology"]
    old_path = tmp_path / "old_s1.h5ad"
    old.write_h5ad(old_path)
    args = evaluate_args(embedded, cohort, tmp_path, predictions=tmp_path / "none.h5ad")
    args[args.index("--train-embeddings") + 1] = str(old_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(old_path) in err and "X_morphology" in err and "pastflow embed" in err
    assert not (tmp_path / "metrics.tsv").exists()


def test_bootstrap_intervals_cover_the_truth_and_pair_the_draws():
    """Two noisy predictions of the same signal: the interval of each holds its population r
    (known in closed form), and the paired interval of their difference is much narrower
    than the unpaired one, because the same cells score both."""
    from pastflow.predict.metrics import bootstrap_pearson, percentile_interval

    def bootstrap_mean_pearson(*args, **kwargs):  # mean r over the genes, per resample
        return {m: d.mean(axis=1) for m, d in bootstrap_pearson(*args, **kwargs).items()}

    rng = np.random.default_rng(0)
    signal = rng.normal(size=(400, 5))
    good = signal + rng.normal(scale=0.5, size=signal.shape)  # population r = 1/sqrt(1.25)
    bad = signal + rng.normal(scale=1.0, size=signal.shape)   # population r = 1/sqrt(2)
    draws = bootstrap_mean_pearson(signal, {"good": good, "bad": bad}, n_boot=400, seed=1)
    low, high = percentile_interval(draws["good"])
    assert low < 1 / np.sqrt(1.25) < high and high - low < 0.05
    low, high = percentile_interval(draws["bad"])
    assert low < 1 / np.sqrt(2) < high
    # A draw is the mean r on cells resampled with replacement (the first, by hand).
    rows = np.random.default_rng(1).integers(0, 400, 400)
    assert draws["good"][0] == pytest.approx(pearson_per_gene(signal[rows], good[rows]).mean())
    constant = bootstrap_mean_pearson(signal, {"mean": np.ones_like(signal)}, n_boot=20, seed=1)
    assert (constant["mean"] == 0).all()  # a constant prediction scores 0, as without resampling
    paired = percentile_interval(draws["good"] - draws["bad"])
    assert paired[0] > 0  # good beats bad beyond resampling noise
    assert paired[1] - paired[0] < (high - low) * 1.5


def test_probe_encoders_are_scored_by_the_same_probe_and_paired_as_baselines():
    """A probe encoder's features (``X_probe_<name>``, here encoding g5 only) become method
    ``<name>_ridge``: scored, given intervals, and a baseline of the paired differences. A
    probe some training sample lacks is left out."""
    train = [measured_sample("a", "P1", 300, 1, scale=TRAIN_SCALE),
             measured_sample("b", "P2", 300, 2, scale=TRAIN_SCALE)]
    test = measured_sample("t", "P3", 200, 3, scale=TEST_SCALE)
    for sample in (*train, test):
        rng = np.random.default_rng(len(sample))
        g5 = sample.columns(["g5"])[:, 0]
        sample.embeddings["X_probe_resnet50_imagenet"] = np.column_stack(
            [g5 + 0.05 * rng.normal(size=len(sample)), rng.normal(size=(len(sample), 7))])
    test.embeddings["X_probe_uni"] = train[0].embeddings["X_image"][:200]  # not in training
    head = pd.DataFrame(test.columns(test.genes), index=test.cell_ids, columns=test.genes)
    settings = EvaluateSettings(n_genes=2, markers=[], bootstrap=100)
    per_gene, predictions, genes = evaluate_sample(test, train, head, settings)
    assert set(per_gene["method"]) == set(METHODS) | {"resnet50_imagenet_ridge"}
    r = per_gene.pivot(index="gene", columns="method", values="pearson_r")
    assert r.loc["g5", "resnet50_imagenet_ridge"] > 0.95
    assert r.loc[["g4", "g0"], "resnet50_imagenet_ridge"].abs().max() < 0.3
    intervals, paired, _ = bootstrap_intervals(test, selection_genes(per_gene), predictions,
                                               genes, settings)
    assert intervals["method"].tolist()[-1] == "resnet50_imagenet_ridge"
    assert paired[["method", "baseline"]].values.tolist() == [
        [m, b] for m in PASTFLOW_METHODS for b in (*BASELINES, "resnet50_imagenet_ridge")]
    summary = summarise(per_gene)
    assert "resnet50_imagenet_ridge" in set(summary["method"])
