"""Evaluation of expression prediction on held-out samples: five methods, per-gene Pearson r.

For every test sample with measured expression, over the same genes:

- ``pastflow_head``: the trained reconstruction head (the predict stage's output);
- ``pastflow_ridge``: the HEST-Benchmark probe (:mod:`pastflow.predict.ridge`) fitted on the
  training samples' trained image embeddings (``obsm["X_image"]``);
- ``random_encoder``: the same probe on the embeddings of the same architecture with random
  weights (``obsm["X_image_random"]``);
- ``morphology_ridge``: the same probe on hand-crafted morphology features (stains, nuclei,
  texture; ``obsm["X_morphology"]``, :mod:`pastflow.embed.morphology`): what an encoder must
  beat to have learned more than a pathologist's measurements;
- ``mean_baseline``: every cell gets the per-gene mean of the training cells. Its prediction
  is constant, so its r is 0 by the convention of :mod:`pastflow.predict.metrics`;
- ``<name>_ridge`` for every probe encoder the embed stage ran (``embed.probe_encoders``:
  e.g. ``resnet50_imagenet_ridge``, the HEST-Benchmark's ResNet50-ImageNet + ridge, when its
  weights are given; ``obsm["X_probe_<name>"]``): the same probe on that frozen encoder's
  features, a baseline. Every encoder is read out by the one probe, so encoder quality and
  readout type (head vs probe) are compared separately.

Intervals: every gene's r and each selection's mean r get a 95% percentile bootstrap interval
over the test sample's cells (``evaluate.bootstrap`` resamples, the same for every method), and
each pastflow method minus each baseline a paired one over the ``train_top`` genes, in
``paired.tsv``.

Genes: the candidates are the model's genes that the test sample and every training sample
measure. Two selections of ``evaluate.n_genes`` (50) of them are scored (:data:`GENE_SELECTIONS`):

- ``train_top``, the headline: the candidates of highest variance over the pooled *training*
  cells' log-expression. Chosen without looking at the test sample, so it cannot flatter.
- ``hest_test_top``: the HEST-Benchmark convention, the candidates of highest variance of the
  *test sample's* measured log-expression; reported for comparison with published numbers.

Marker genes (``evaluate.markers``) are scored too (flagged in the per-gene table) whether or
not they are among those.

With training samples from several patients, the probe methods are also scored
leave-one-patient-out on the training set (:func:`evaluate_leave_one_patient_out`). The
encoder was pretrained on all of those patients, so that estimate is held out for the probe,
not for the pastflow encoder; for the random encoder it is held out entirely.

Everything here is numpy/sklearn on arrays already in memory; the CLI reads the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pastflow.predict.metrics import (bootstrap_pearson, highest_variance_genes,
                                      most_variable_genes, pearson_per_gene, percentile_interval,
                                      percentile_intervals)
from pastflow.predict.ridge import fit_hest_ridge
from pastflow.predict.settings import EvaluateSettings

log = logging.getLogger(__name__)

METHODS = ("pastflow_head", "pastflow_ridge", "mean_baseline", "random_encoder",
           "morphology_ridge")
# Paired differences: each pastflow method minus each baseline.
PASTFLOW_METHODS = ("pastflow_head", "pastflow_ridge")
BASELINES = ("random_encoder", "mean_baseline", "morphology_ridge")
# The ridge probe's methods and the embedding-table features they read (obsm keys).
PROBES = {"pastflow_ridge": "X_image", "random_encoder": "X_image_random",
          "morphology_ridge": "X_morphology"}
# Features of the frozen probe encoders the embed stage ran (obsm "X_probe_<name>"); each is
# scored as method "<name>_ridge", a baseline.
PROBE_ENCODER_PREFIX = "X_probe_"


def probe_method(key: str) -> str:
    """``X_probe_resnet50_imagenet`` -> ``resnet50_imagenet_ridge``."""
    return f"{key[len(PROBE_ENCODER_PREFIX):]}_ridge"


def method_order(methods) -> list[str]:
    """``methods`` in report order: :data:`METHODS` first, then the probe encoders'."""
    methods = list(methods)
    return [m for m in METHODS if m in methods] + sorted(set(methods) - set(METHODS))


# Gene selections scored (see the module docstring); the first is the headline.
GENE_SELECTIONS = ("train_top", "hest_test_top")


@dataclass
class MeasuredSample:
    """A sample's cells that have both embeddings and measured expression, row-aligned.

    ``expression`` is the QC table's log1p-normalised ``X`` (CSR ``(n, len(genes))``);
    ``embeddings`` maps each key of :data:`PROBES` (``X_image``, ...) to ``(n, D)``; ``xy`` is
    ``(n, 2)`` H&E level-0 pixels.
    """

    name: str
    patient: str
    cell_ids: np.ndarray
    genes: list[str]
    expression: sp.csr_matrix
    embeddings: dict[str, np.ndarray]
    xy: np.ndarray
    slide_path: str = ""

    def __len__(self) -> int:
        return len(self.cell_ids)

    def columns(self, genes: Sequence[str]) -> np.ndarray:
        """Dense ``float64 (n, len(genes))`` of the named genes (each must be measured)."""
        index = pd.Index(self.genes).get_indexer(list(genes))
        if (index < 0).any():
            raise KeyError(f"{self.name} does not measure {list(genes)[int(np.argmin(index))]!r}")
        return np.asarray(self.expression[:, index].toarray(), np.float64)


def join_measured(name: str, patient: str, embedding, qc, slide_path: str = "") -> MeasuredSample:
    """Align an embed-stage table and a QC table on ``cell_id`` (cells in both, QC order)."""
    table_ids = qc.obs["cell_id"].astype(str).to_numpy()
    rows = pd.Index(embedding.obs["cell_id"].astype(str)).get_indexer(table_ids)
    found = rows >= 0
    if not found.any():
        raise ValueError(f"{name}: no cell of the QC table has an embedding")
    rows = rows[found]
    obs = embedding.obs.iloc[rows]
    return MeasuredSample(
        name=name, patient=patient, cell_ids=table_ids[found], genes=list(qc.var_names),
        expression=sp.csr_matrix(qc.X[np.flatnonzero(found)], dtype=np.float32),
        embeddings={key: np.asarray(embedding.obsm[key][rows], np.float32)
                    for key in [*PROBES.values(), *(k for k in embedding.obsm
                                                    if k.startswith(PROBE_ENCODER_PREFIX))]},
        xy=obs[["x_px", "y_px"]].to_numpy(np.float64), slide_path=slide_path)


def candidate_genes(test: MeasuredSample, train: Sequence[MeasuredSample],
                    model_genes: Sequence[str]) -> list[str]:
    """Model genes measured in the test sample and in every training sample (model order)."""
    shared = set(test.genes).intersection(*(s.genes for s in train))
    return [g for g in model_genes if g in shared]


def pooled_variance(samples: Sequence[MeasuredSample], genes: Sequence[str]) -> np.ndarray:
    """Variance of each gene over the cells of all ``samples`` together (each must measure
    every gene): ``float64 (len(genes),)``, from sparse sums, without a dense copy."""
    total = np.zeros(len(genes))
    squares = np.zeros(len(genes))
    n = 0
    for sample in samples:
        index = pd.Index(sample.genes).get_indexer(list(genes))
        if (index < 0).any():
            raise KeyError(f"{sample.name} does not measure {list(genes)[int(np.argmin(index))]!r}")
        part = sample.expression[:, index].astype(np.float64)
        total += np.asarray(part.sum(axis=0)).ravel()
        squares += np.asarray(part.multiply(part).sum(axis=0)).ravel()
        n += part.shape[0]
    mean = total / n
    return np.maximum(squares / n - mean * mean, 0.0)


def score_genes(test: MeasuredSample, genes: Sequence[str],
                predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table ``method, gene, pearson_r, level_offset`` for ``predictions`` (method ->
    ``(n, len(genes))``); ``level_offset``: the gene's mean predicted minus mean measured
    log1p level over the sample's cells (r ignores it; a slide on another scale shows here)."""
    measured = test.columns(genes)
    frames = [pd.DataFrame({"method": method, "gene": list(genes),
                            "pearson_r": pearson_per_gene(measured, predicted),
                            "level_offset": np.asarray(predicted, np.float64).mean(axis=0)
                            - measured.mean(axis=0)})
              for method, predicted in predictions.items()]
    return pd.concat(frames, ignore_index=True)


def probe_predictions(train: Sequence[MeasuredSample], test: MeasuredSample,
                      genes: Sequence[str], *, n_components: int,
                      seed: int) -> dict[str, np.ndarray]:
    """The probe methods' (:data:`PROBES`) and ``mean_baseline`` predictions for ``test`` from
    the training samples' cells: each ``(len(test), len(genes))``. The probe's PCA keeps at
    most as many components as the features have (22 morphology features keep 22)."""
    target = np.concatenate([s.columns(genes) for s in train])
    out = {}
    # Probe encoders that every sample was embedded with (one missing from a training sample
    # would leave the probe without its cells).
    encoders = [k for k in test.embeddings if k.startswith(PROBE_ENCODER_PREFIX)
                and all(k in s.embeddings for s in train)]
    for method, key in [*PROBES.items(), *((probe_method(k), k) for k in sorted(encoders))]:
        features = np.concatenate([s.embeddings[key] for s in train])
        probe = fit_hest_ridge(features, target, n_components=n_components, seed=seed)
        out[method] = probe.predict(test.embeddings[key])
    out["mean_baseline"] = np.broadcast_to(target.mean(axis=0), (len(test), len(genes)))
    return out


def evaluate_sample(test: MeasuredSample, train: Sequence[MeasuredSample],
                    head: pd.DataFrame, settings: EvaluateSettings
                    ) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str]]:
    """Score the methods on one test sample.

    Args:
        head: the trained head's predictions, cells x model genes (rows indexed by cell id,
            at least the test sample's measured cells).
        settings: ``n_genes`` scored, ``markers`` (also scored and flagged when they are
            candidates), ``pca_components`` and ``seed`` of the probe.

    Returns:
        ``(per_gene, predictions, scored_genes)``: the long table (``method, gene, pearson_r,
        variance_rank`` (1 = most variable on the test sample; 0 = not in its top
        ``n_genes``), ``top`` (in that top: the ``hest_test_top`` selection), ``marker``,
        ``train_rank`` (1 = most variable over the pooled training cells; 0 = not in their top
        ``n_genes``), ``train_top`` (the ``train_top`` selection)), the predictions
        ``(n_cells, len(scored_genes))`` by method, and the scored genes (the training top
        genes, then the test sample's top genes outside them, then markers outside both).
    """
    candidates = candidate_genes(test, train, list(head.columns))
    if not candidates:
        raise ValueError(f"{test.name}: no gene is measured in it, in every training sample and "
                         "by the model")
    n_genes, markers = settings.n_genes, list(settings.markers)
    train_top = highest_variance_genes(pooled_variance(train, candidates), candidates, n_genes)
    test_top = most_variable_genes(test.columns(candidates), candidates, n_genes)
    genes = list(dict.fromkeys(train_top + test_top
                               + [g for g in markers if g in candidates]))
    missing = np.setdiff1d(test.cell_ids, head.index.to_numpy(str))
    if len(missing):
        raise ValueError(f"{test.name}: {len(missing)} measured cells have no head prediction "
                         f"(first {missing[0]!r})")
    predictions = {"pastflow_head": head.loc[test.cell_ids, genes].to_numpy(np.float64)}
    predictions.update(probe_predictions(train, test, genes,
                                         n_components=settings.pca_components,
                                         seed=settings.seed))
    per_gene = score_genes(test, genes, {m: predictions[m] for m in method_order(predictions)})
    for rank_column, flag_column, top in (("variance_rank", "top", test_top),
                                          ("train_rank", "train_top", train_top)):
        rank = {g: i + 1 for i, g in enumerate(top)}
        per_gene[rank_column] = per_gene["gene"].map(rank).fillna(0).astype(int)
        per_gene[flag_column] = per_gene[rank_column] > 0
    per_gene["marker"] = per_gene["gene"].isin(list(markers))
    return per_gene, predictions, genes


def selection_genes(per_gene: pd.DataFrame) -> dict[str, list[str]]:
    """Each gene selection of :data:`GENE_SELECTIONS` -> its genes, from one sample's
    per-gene table (``train_top``: the ``train_top`` flag; ``hest_test_top``: ``top``)."""
    genes = per_gene.drop_duplicates("gene")
    return {"train_top": list(genes.loc[genes["train_top"], "gene"]),
            "hest_test_top": list(genes.loc[genes["top"], "gene"])}


def bootstrap_intervals(test: MeasuredSample, selections: dict[str, list[str]],
                        predictions: dict[str, np.ndarray], genes: Sequence[str],
                        settings: EvaluateSettings
                        ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """95% bootstrap intervals over the test sample's cells, from one set of resamples.

    Returns:
        ``(intervals, paired, per_gene)``: each method's mean r over each selection of
        ``selections`` (``method, genes, ci_low, ci_high``); the paired differences pastflow
        minus baseline over the first selection (``method, baseline, diff, ci_low, ci_high``;
        ``diff`` on all cells); every scored gene's r (``method, gene, ci_low, ci_high``).
    """
    genes = list(genes)
    methods = method_order(predictions)
    draws = bootstrap_pearson(test.columns(genes), {m: predictions[m] for m in methods},
                              settings.bootstrap, settings.seed)
    per_gene = []
    for method in methods:
        low, high = percentile_intervals(draws[method])
        per_gene.append(pd.DataFrame({"method": method, "gene": genes, "ci_low": low,
                                      "ci_high": high}))
    means, rows = {}, []
    for selection, chosen in selections.items():
        columns = [genes.index(g) for g in chosen]
        for method in methods:
            means[method, selection] = draws[method][:, columns].mean(axis=1)
            rows.append({"method": method, "genes": selection, **dict(zip(
                ("ci_low", "ci_high"), percentile_interval(means[method, selection])))})
    headline = next(iter(selections))
    measured = test.columns(selections[headline])
    columns = [genes.index(g) for g in selections[headline]]
    point = {m: pearson_per_gene(measured, np.asarray(predictions[m])[:, columns]).mean()
             for m in methods}
    baselines = [*BASELINES, *(m for m in methods if m not in METHODS)]
    paired = pd.DataFrame([
        {"method": m, "baseline": b, "diff": point[m] - point[b],
         **dict(zip(("ci_low", "ci_high"),
                    percentile_interval(means[m, headline] - means[b, headline])))}
        for m in PASTFLOW_METHODS for b in baselines])
    return pd.DataFrame(rows), paired, pd.concat(per_gene, ignore_index=True)


def summarise(per_gene: pd.DataFrame) -> pd.DataFrame:
    """One row per method and gene selection (``genes``: ``train_top``, ``hest_test_top``):
    mean r over the selection's genes (``mean_pearson_50``), their number, the mean r over
    the marker genes scored (NaN when none; the same for both selections), and
    ``mean_offset``, the mean over the selection's genes of ``level_offset`` (predicted minus
    measured mean log1p level; NaN for a per-gene table without it)."""
    rows = []
    flags = {"train_top": "train_top", "hest_test_top": "top"}
    for method in method_order(per_gene["method"].unique()):
        part = per_gene[per_gene["method"] == method]
        if part.empty:
            continue
        markers = part[part["marker"]]
        for selection in GENE_SELECTIONS:
            top = part[part[flags[selection]]]
            rows.append({"method": method, "genes": selection,
                         "mean_pearson_50": float(top["pearson_r"].mean()),
                         "n_genes": int(len(top)),
                         "mean_pearson_markers": float(markers["pearson_r"].mean())
                         if len(markers) else np.nan,
                         "mean_offset": float(top["level_offset"].mean())
                         if "level_offset" in top else np.nan})
    return pd.DataFrame(rows)


def evaluate_leave_one_patient_out(samples: Sequence[MeasuredSample], model_genes: Sequence[str],
                                   settings: EvaluateSettings) -> pd.DataFrame:
    """The probe methods and the mean baseline, each training patient held out in turn
    (``settings``: ``n_genes`` scored, ``pca_components`` and ``seed`` of the probe), over the
    ``n_genes`` genes most variable over the other patients' cells.

    Returns one row per held-out patient and method: ``patient``, ``method``,
    ``mean_pearson_50``, ``n_genes``, ``n_cells``, ``n_train_cells``; empty (with those
    columns) when the samples come from fewer than two patients.
    """
    columns = ["patient", "method", "mean_pearson_50", "n_genes", "n_cells", "n_train_cells"]
    patients = sorted({s.patient for s in samples})
    if len(patients) < 2:
        log.info("leave-one-patient-out skipped: the training samples come from %d patient(s)",
                 len(patients))
        return pd.DataFrame(columns=columns)
    rows = []
    for patient in patients:
        held = [s for s in samples if s.patient == patient]
        rest = [s for s in samples if s.patient != patient]
        pooled = _pool(held, f"patient {patient}")
        genes = candidate_genes(pooled, rest, model_genes)
        genes = [g for g in genes if all(g in s.genes for s in held)]
        if not genes:
            log.warning("leave-one-patient-out: patient %s shares no gene with the others", patient)
            continue
        # Chosen on the patients the probe is fitted on, as ``train_top`` on test samples.
        top = highest_variance_genes(pooled_variance(rest, genes), genes, settings.n_genes)
        scores = score_genes(pooled, top, probe_predictions(
            rest, pooled, top, n_components=settings.pca_components, seed=settings.seed))
        n_train = sum(len(s) for s in rest)
        for method, part in scores.groupby("method", sort=False):
            rows.append({"patient": patient, "method": method,
                         "mean_pearson_50": float(part["pearson_r"].mean()),
                         "n_genes": len(top), "n_cells": len(pooled), "n_train_cells": n_train})
    return pd.DataFrame(rows, columns=columns)


def _pool(samples: Sequence[MeasuredSample], name: str) -> MeasuredSample:
    """Several samples as one (genes: those all of them measure)."""
    if len(samples) == 1:
        return samples[0]
    genes = [g for g in samples[0].genes if all(g in s.genes for s in samples[1:])]
    return MeasuredSample(
        name=name, patient=samples[0].patient,
        cell_ids=np.concatenate([s.cell_ids for s in samples]), genes=genes,
        expression=sp.csr_matrix(np.concatenate([s.columns(genes) for s in samples])),
        embeddings={k: np.concatenate([s.embeddings[k] for s in samples]) for k in PROBES.values()},
        xy=np.concatenate([s.xy for s in samples]))
