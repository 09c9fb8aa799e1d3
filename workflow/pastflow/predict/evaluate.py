"""Evaluation of expression prediction on held-out samples: four methods, per-gene Pearson r.

For every test sample with measured expression, over the same genes:

- ``pastflow_head``: the trained reconstruction head (the predict stage's output);
- ``pastflow_ridge``: the HEST-Benchmark probe (:mod:`pastflow.predict.ridge`) fitted on the
  training samples' trained image embeddings (``obsm["X_image"]``);
- ``random_encoder``: the same probe on the embeddings of the same architecture with random
  weights (``obsm["X_image_random"]``);
- ``mean_baseline``: every cell gets the per-gene mean of the training cells. Its prediction
  is constant, so its r is 0 by the convention of :mod:`pastflow.predict.metrics`.

Intervals: a method's mean r gets a 95% percentile bootstrap interval over the test sample's
cells (``evaluate.bootstrap`` resamples), and each pastflow method minus each baseline a
paired one (the same resamples for both), in ``paired.tsv``.

Genes: the candidates are the model's genes that the test sample and every training sample
measure; the score of a method is the mean r over the ``evaluate.n_genes`` (50) candidates of
highest variance of the *test sample's* measured log-expression. Marker genes
(``evaluate.markers``) are scored too (flagged in the per-gene table) whether or not they are
among those 50.

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

from pastflow.predict.metrics import (bootstrap_mean_pearson, most_variable_genes,
                                      pearson_per_gene, percentile_interval)
from pastflow.predict.ridge import fit_hest_ridge
from pastflow.predict.settings import EvaluateSettings

log = logging.getLogger(__name__)

METHODS = ("pastflow_head", "pastflow_ridge", "mean_baseline", "random_encoder")
# Paired differences: each pastflow method minus each baseline.
PASTFLOW_METHODS = ("pastflow_head", "pastflow_ridge")
BASELINES = ("random_encoder", "mean_baseline")
PROBES = {"pastflow_ridge": "X_image", "random_encoder": "X_image_random"}


@dataclass
class MeasuredSample:
    """A sample's cells that have both embeddings and measured expression, row-aligned.

    ``expression`` is the QC table's log1p-normalised ``X`` (CSR ``(n, len(genes))``);
    ``embeddings`` maps ``X_image`` / ``X_image_random`` to ``(n, D)``; ``xy`` is
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
                    for key in PROBES.values()},
        xy=obs[["x_px", "y_px"]].to_numpy(np.float64), slide_path=slide_path)


def candidate_genes(test: MeasuredSample, train: Sequence[MeasuredSample],
                    model_genes: Sequence[str]) -> list[str]:
    """Model genes measured in the test sample and in every training sample (model order)."""
    shared = set(test.genes).intersection(*(s.genes for s in train))
    return [g for g in model_genes if g in shared]


def score_genes(test: MeasuredSample, genes: Sequence[str],
                predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table ``method, gene, pearson_r`` for ``predictions`` (method -> ``(n, len(genes))``)."""
    measured = test.columns(genes)
    frames = [pd.DataFrame({"method": method, "gene": list(genes),
                            "pearson_r": pearson_per_gene(measured, predicted)})
              for method, predicted in predictions.items()]
    return pd.concat(frames, ignore_index=True)


def probe_predictions(train: Sequence[MeasuredSample], test: MeasuredSample,
                      genes: Sequence[str], *, n_components: int,
                      seed: int) -> dict[str, np.ndarray]:
    """``pastflow_ridge``, ``random_encoder`` and ``mean_baseline`` predictions for ``test``
    from the training samples' cells: each ``(len(test), len(genes))``."""
    target = np.concatenate([s.columns(genes) for s in train])
    out = {}
    for method, key in PROBES.items():
        features = np.concatenate([s.embeddings[key] for s in train])
        probe = fit_hest_ridge(features, target, n_components=n_components, seed=seed)
        out[method] = probe.predict(test.embeddings[key])
    out["mean_baseline"] = np.broadcast_to(target.mean(axis=0), (len(test), len(genes)))
    return out


def evaluate_sample(test: MeasuredSample, train: Sequence[MeasuredSample],
                    head: pd.DataFrame, settings: EvaluateSettings
                    ) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str]]:
    """Score the four methods on one test sample.

    Args:
        head: the trained head's predictions, cells x model genes (rows indexed by cell id,
            at least the test sample's measured cells).
        settings: ``n_genes`` scored, ``markers`` (also scored and flagged when they are
            candidates), ``pca_components`` and ``seed`` of the probe.

    Returns:
        ``(per_gene, predictions, scored_genes)``: the long table (``method, gene, pearson_r,
        variance_rank`` (1 = most variable on the test sample; 0 = not in the top
        ``n_genes``), ``top``, ``marker``), the predictions ``(n_cells, len(scored_genes))`` by
        method, and the scored genes (top genes, then markers outside them).
    """
    candidates = candidate_genes(test, train, list(head.columns))
    if not candidates:
        raise ValueError(f"{test.name}: no gene is measured in it, in every training sample and "
                         "by the model")
    n_genes, markers = settings.n_genes, list(settings.markers)
    top = most_variable_genes(test.columns(candidates), candidates, n_genes)
    extra = [g for g in markers if g in candidates and g not in top]
    genes = top + extra
    missing = np.setdiff1d(test.cell_ids, head.index.to_numpy(str))
    if len(missing):
        raise ValueError(f"{test.name}: {len(missing)} measured cells have no head prediction "
                         f"(first {missing[0]!r})")
    predictions = {"pastflow_head": head.loc[test.cell_ids, genes].to_numpy(np.float64)}
    predictions.update(probe_predictions(train, test, genes,
                                         n_components=settings.pca_components,
                                         seed=settings.seed))
    per_gene = score_genes(test, genes, {m: predictions[m] for m in METHODS})
    rank = {g: i + 1 for i, g in enumerate(top)}
    per_gene["variance_rank"] = per_gene["gene"].map(rank).fillna(0).astype(int)
    per_gene["top"] = per_gene["variance_rank"] > 0
    per_gene["marker"] = per_gene["gene"].isin(list(markers))
    return per_gene, predictions, genes


def bootstrap_intervals(test: MeasuredSample, top_genes: Sequence[str],
                        predictions: dict[str, np.ndarray], genes: Sequence[str],
                        settings: EvaluateSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """95% bootstrap intervals over the test sample's cells of each method's mean r over
    ``top_genes`` (``method, ci_low, ci_high``), and of the paired differences pastflow
    minus baseline (``method, baseline, diff, ci_low, ci_high``; ``diff`` on all cells)."""
    columns = [list(genes).index(g) for g in top_genes]
    measured = test.columns(top_genes)
    top = {m: np.asarray(predictions[m])[:, columns] for m in METHODS}
    draws = bootstrap_mean_pearson(measured, top, settings.bootstrap, settings.seed)
    intervals = pd.DataFrame([{"method": m, **dict(zip(("ci_low", "ci_high"),
                                                        percentile_interval(draws[m])))}
                              for m in METHODS])
    point = {m: pearson_per_gene(measured, top[m]).mean() for m in METHODS}
    paired = pd.DataFrame([
        {"method": m, "baseline": b, "diff": point[m] - point[b],
         **dict(zip(("ci_low", "ci_high"), percentile_interval(draws[m] - draws[b])))}
        for m in PASTFLOW_METHODS for b in BASELINES])
    return intervals, paired


def summarise(per_gene: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean r over the top genes (``mean_pearson_50``), their number, and
    the mean r over the marker genes scored (NaN when none)."""
    rows = []
    for method in METHODS:
        part = per_gene[per_gene["method"] == method]
        if part.empty:
            continue
        top, markers = part[part["top"]], part[part["marker"]]
        rows.append({"method": method, "mean_pearson_50": float(top["pearson_r"].mean()),
                     "n_genes": int(len(top)),
                     "mean_pearson_markers": float(markers["pearson_r"].mean())
                     if len(markers) else np.nan})
    return pd.DataFrame(rows)


def evaluate_leave_one_patient_out(samples: Sequence[MeasuredSample], model_genes: Sequence[str],
                                   settings: EvaluateSettings) -> pd.DataFrame:
    """The probe methods and the mean baseline, each training patient held out in turn
    (``settings``: ``n_genes`` scored, ``pca_components`` and ``seed`` of the probe).

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
        top = most_variable_genes(pooled.columns(genes), genes, settings.n_genes)
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
